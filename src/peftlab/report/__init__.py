"""The comparison report: run folders in; table.md, table.tex, table.csv, summary.json and plots out.

    python -m peftlab.report RUN_FOLDER... --out results
    python -m peftlab.report --runs-dir pipeline/runs --methods full lora --seeds 1 2 3 --evals pipeline/evals

`runs` reads and checks the folders, `table` computes rows and statistics (`stats`), `render` and
`plots` write the files, `cli` is the command line.
"""
