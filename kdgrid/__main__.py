"""python -m kdgrid"""

from kdgrid.cli import main

main()
