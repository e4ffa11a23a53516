"""Build the student edition: the same book with every solution hidden.

Usage: python book/student_edition.py [extra jupyter-book build options]
Writes _build/student/_build/html. Solutions are hidden through sphinx-exercise's
``hide_solutions``; the hidden code cells that execute them are never rendered.
"""

import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
config = (root / "_config.yml").read_text()
if "hide_solutions: false" not in config:
    sys.exit("_config.yml no longer says 'hide_solutions: false'; update this script.")
student = root / "_build" / "_config_student.yml"
student.parent.mkdir(parents=True, exist_ok=True)
student.write_text(config.replace("hide_solutions: false", "hide_solutions: true"))
cmd = ["jupyter-book", "build", str(root), "--config", str(student),
       "--path-output", str(root / "_build" / "student"), *sys.argv[1:]]
sys.exit(subprocess.call(cmd))
