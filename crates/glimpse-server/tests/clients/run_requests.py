# Runs seed_requests.py as is; its final `print(response.json())` prints a Python dict, so print
# is swapped for one that writes JSON the test can parse. The script itself is not touched.
import builtins, json, runpy, sys
builtins.print = lambda obj, *a, **k: sys.stdout.write(json.dumps(obj))
runpy.run_path(sys.argv[1], run_name="__main__")
