"""scripts/audit-deps (the pip-audit step of .ci/run) with a stand-in pip-audit that answers
like the real one: a known vulnerability fails CI; an advisory database out of reach (no
network, or a PyPI JSON API that knows none of the packages, as a mirror does) or no
pip-audit at all says that the audit could not run, and does not fail CI."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "audit-deps")

FAKE = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
service, out = args[args.index("-s") + 1], args[args.index("--output") + 1]
answer = json.loads(os.environ["FAKE_AUDIT"])[service]
if answer == "unreachable":
    print("requests.exceptions.ConnectionError: HTTPSConnectionPool(host='pypi.org')",
          file=sys.stderr)
    sys.exit(1)
with open(out, "w") as f:
    json.dump({{"dependencies": answer, "fixes": []}}, f)
print("Found vulnerabilities" if any(d.get("vulns") for d in answer) else
      "No known vulnerabilities found")
sys.exit(1 if any(d.get("vulns") for d in answer) else 0)
'''
CLEAN = [{"name": "twisted", "version": "26.10.0", "vulns": []},
         {"name": "klein", "version": "24.8.0", "vulns": []}]
VULNERABLE = [{"name": "twisted", "version": "26.10.0", "vulns": []},
              {"name": "requests", "version": "2.19.0", "vulns": [
                  {"id": "PYSEC-2018-28", "fix_versions": ["2.20.0"], "aliases": [],
                   "description": "..."}]}]
UNKNOWN = [{"name": "twisted", "skip_reason": "Dependency not found on PyPI and could not "
                                              "be audited: twisted (26.10.0)"}]


def audit(tmp_path: Any, pypi: Any, osv: Any, fake: bool = True) -> tuple[int, str]:
    path = str(tmp_path / "pip-audit")
    if fake:
        with open(path, "w") as f:
            f.write(FAKE.format(python=sys.executable))
        os.chmod(path, 0o755)
    env = {**os.environ, "PIP_AUDIT": path,
           "FAKE_AUDIT": __import__("json").dumps({"pypi": pypi, "osv": osv})}
    result = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "venv")],
                            capture_output=True, text=True, env=env, timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_clean_environment_passes(tmp_path: Any) -> None:
    code, out = audit(tmp_path, CLEAN, "unreachable")
    assert code == 0
    assert "pip-audit (pypi): no known vulnerabilities in 2 packages" in out


def test_a_known_vulnerability_fails_ci(tmp_path: Any) -> None:
    code, out = audit(tmp_path, VULNERABLE, CLEAN)
    assert code == 1
    assert "requests 2.19.0: PYSEC-2018-28 (fixed in 2.20.0)" in out


def test_unreachable_database_says_so_and_passes(tmp_path: Any) -> None:
    code, out = audit(tmp_path, "unreachable", "unreachable")
    assert code == 0
    assert "pip-audit: the audit could not run" in out and "ConnectionError" in out


def test_a_mirror_that_knows_no_package_is_not_a_clean_audit(tmp_path: Any) -> None:
    code, out = audit(tmp_path, UNKNOWN, "unreachable")
    assert code == 0
    assert "pip-audit: the audit could not run" in out
    assert "none of the 1 packages was found" in out
    assert "no known vulnerabilities" not in out


def test_osv_is_tried_when_pypi_knows_nothing(tmp_path: Any) -> None:
    code, out = audit(tmp_path, UNKNOWN, VULNERABLE)
    assert code == 1 and "pip-audit (osv): requests 2.19.0" in out


def test_pip_audit_missing_says_so_and_passes(tmp_path: Any) -> None:
    code, out = audit(tmp_path, CLEAN, CLEAN, fake=False)
    assert code == 0 and "pip-audit: the audit could not run" in out
