"""Runs each driver given on the command line in this one process (torch starts once
under compute-sanitizer) and exits with the worst exit status."""
import runpy
import sys
import traceback

statuses = {}
for path in sys.argv[1:]:
    try:
        runpy.run_path(path, run_name="__main__")
        statuses[path] = 0
    except SystemExit as exit_:
        statuses[path] = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception:  # report it and go on: the other drivers still run under the sanitizer
        traceback.print_exc()
        statuses[path] = 1
for path, status in statuses.items():
    print(f"{path}: exit {status}")
sys.exit(max(statuses.values(), default=0))
