/* Dropout keep masks from Philox4x32-10, the counter-based generator torch's CUDA dropout uses
 * (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; constants as in Random123
 * and curand).
 *
 * A mask is a stream of 16-bit numbers under a 64-bit key (the seed): block i of the stream is
 * Philox4x32-10 of the counter (i, 0, 0, 0), four 32-bit words, eight 16-bit numbers. Element e of a
 * mask is kept when its number is >= cut, so it is kept with probability 1 - cut / 65536. Which
 * number an element takes is fixed by its index alone, so a mask depends only on (seed, n, cut):
 * element e lies in block 8 * (e / 64) + e % 8, and is number (e % 64) / 8 of it (number 2w the low
 * half of word w, 2w + 1 the high half). That layout lets eight blocks, one per vector lane, give 64
 * consecutive elements.
 *
 * Written in portable C with GCC/Clang vector extensions; on x86 the 32x32->64-bit multiplies use
 * _mm512_mul_epu32 / _mm256_mul_epu32 when the compiler targets AVX-512 / AVX2. Built and loaded by
 * peftlab/nn/native.py. */
#include <stdint.h>
#include <string.h>

typedef uint64_t u64x8 __attribute__((vector_size(64)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

#define LO32 0xFFFFFFFFull

#if defined(__AVX512F__)
#include <immintrin.h>
static inline u64x8 mul32(u64x8 a, uint64_t m) { /* the low 32 bits of each lane times m < 2^32 */
    return (u64x8)_mm512_mul_epu32((__m512i)a, _mm512_set1_epi64((long long)m));
}
#elif defined(__AVX2__)
#include <immintrin.h>
static inline u64x8 mul32(u64x8 a, uint64_t m) {
    __m256i half[2];
    memcpy(half, &a, sizeof a);
    __m256i mm = _mm256_set1_epi64x((long long)m);
    half[0] = _mm256_mul_epu32(half[0], mm);
    half[1] = _mm256_mul_epu32(half[1], mm);
    memcpy(&a, half, sizeof a);
    return a;
}
#else
static inline u64x8 mul32(u64x8 a, uint64_t m) { return (a & LO32) * m; }
#endif

/* Groups of eight blocks computed together: a round is a chain of multiplies, and independent groups
 * keep the multiplier busy while each waits on its own. */
#define GROUPS 4
#define SPAN (64 * GROUPS) /* elements per pass */

/* Philox4x32-10 of blocks first .. first + 8 * GROUPS - 1: words[g][w] holds word w of blocks
 * first + 8g + lane, each in the low 32 bits of its lane. */
static inline void philox_blocks(uint64_t first, uint64_t seed, u64x8 words[GROUPS][4]) {
    u64x8 c0[GROUPS], c1[GROUPS], c2[GROUPS], c3[GROUPS];
    const u64x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int g = 0; g < GROUPS; g++) {
        u64x8 block = lane + (first + 8 * (uint64_t)g);
        c0[g] = block & LO32;
        c1[g] = block >> 32;
        c2[g] = c3[g] = lane * 0;
    }
    uint64_t k0 = seed & LO32, k1 = seed >> 32;
    for (int round = 0; round < 10; round++) {
        for (int g = 0; g < GROUPS; g++) {
            u64x8 p0 = mul32(c0[g], 0xD2511F53u), p1 = mul32(c2[g], 0xCD9E8D57u);
            u64x8 n0 = (p1 >> 32) ^ c1[g] ^ k0, n2 = (p0 >> 32) ^ c3[g] ^ k1;
            c1[g] = p1 & LO32;
            c3[g] = p0 & LO32;
            c0[g] = n0;
            c2[g] = n2;
        }
        k0 = (k0 + 0x9E3779B9u) & LO32; /* the Weyl key schedule */
        k1 = (k1 + 0xBB67AE85u) & LO32;
    }
    for (int g = 0; g < GROUPS; g++) {
        words[g][0] = c0[g];
        words[g][1] = c1[g];
        words[g][2] = c2[g];
        words[g][3] = c3[g];
    }
}

/* Built with -fopenmp, a mask of at least this many elements is split across the threads of the
 * OpenMP runtime torch itself runs on (libgomp.so.1, already loaded), in whole passes: which number an
 * element takes does not depend on the split, so the mask is the same with any number of threads. */
#define PARALLEL_FROM 32768

/* y[e] = value where element e is kept, 0 where it is dropped, for e < n; one function per element
 * width (value: the bit pattern of 1 or of a scale in the mask's dtype). */
#define KEEP_MASK(NAME, T, VEC)                                                                      \
    void NAME(T *y, int64_t n, uint32_t cut, T value, uint64_t seed) {                               \
        _Pragma("omp parallel for schedule(static) if (n >= PARALLEL_FROM)")                         \
        for (int64_t start = 0; start < n; start += SPAN) {                                          \
            u64x8 words[GROUPS][4];                                                                  \
            T out[SPAN];                                                                             \
            philox_blocks((uint64_t)start / 8, seed, words);                                         \
            for (int g = 0; g < GROUPS; g++)                                                         \
                for (int j = 0; j < 8; j++) {                                                        \
                    u64x8 number = (words[g][j / 2] >> (16 * (j % 2))) & 0xFFFF;                     \
                    VEC kept = __builtin_convertvector(number >= cut, VEC); /* all ones where kept */ \
                    kept &= value;                                                                   \
                    memcpy(out + 64 * g + 8 * j, &kept, sizeof kept);                                \
                }                                                                                    \
            int64_t m = n - start < SPAN ? n - start : SPAN;                                         \
            memcpy(y + start, out, (size_t)m * sizeof(T));                                           \
        }                                                                                            \
    }

KEEP_MASK(keep_mask_8, uint8_t, u8x8)
KEEP_MASK(keep_mask_16, uint16_t, u16x8)
KEEP_MASK(keep_mask_32, uint32_t, u32x8)
KEEP_MASK(keep_mask_64, uint64_t, u64x8)

/* The four words of one Philox4x32-10 block, for checking this file against published test vectors. */
void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint64_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3], k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = 0xD2511F53ull * c0, p1 = 0xCD9E8D57ull * c2;
        uint64_t n0 = (p1 >> 32) ^ c1 ^ k0, n2 = (p0 >> 32) ^ c3 ^ k1;
        c1 = p1 & LO32;
        c3 = p0 & LO32;
        c0 = n0;
        c2 = n2;
        k0 = (k0 + 0x9E3779B9u) & LO32;
        k1 = (k1 + 0xBB67AE85u) & LO32;
    }
    out[0] = (uint32_t)c0;
    out[1] = (uint32_t)c1;
    out[2] = (uint32_t)c2;
    out[3] = (uint32_t)c3;
}
