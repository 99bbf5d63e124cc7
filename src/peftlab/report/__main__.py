from peftlab.report.cli import main

main()
