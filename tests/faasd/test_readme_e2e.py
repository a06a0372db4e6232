"""The README's quick start and CLI tour, run exactly as printed against the example functions.

Only the port differs: the daemon binds port 0 and the commands' 8080 is replaced by the port
it got. The example models must be built (`make test` builds them first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faasd.daemon_process import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
EXAMPLES = ("digits", "squeezenet", "resnet50")


def _block(after: str) -> list[str]:
    start = README.index(after)
    body = README[README.index("```sh\n", start) + 6 :]
    return [line for line in body[: body.index("```")].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    missing = [n for n in EXAMPLES if not (REPO / "functions" / n / "model.onnx").exists()]
    if missing:
        pytest.skip(f"example models not built ({', '.join(missing)}); run `make models`")
    daemon = start_daemon(tmp_path_factory.mktemp("readme"), REPO / "functions",
                          "--workflows", str(REPO / "workflows"))
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def test_quickstart_names_the_two_commands() -> None:
    quick = README[README.index("## Quick start") : README.index("## The CLI")]
    assert "make run" in quick and "make test" in quick


def test_quickstart_curl_lines_work_as_printed(examples: DaemonProcess) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    lines = _block("<!-- quickstart-curl: begin -->")
    assert len(lines) >= 4
    for names in EXAMPLES:
        assert any(f"/function/{names}" in line for line in lines)
    for workflow in ("classify", "ensemble", "cutout"):
        assert any(f"/workflow/{workflow}" in line for line in lines)
    for line in lines:
        command = line.replace("127.0.0.1:8080", f"127.0.0.1:{examples.port}")
        out = subprocess.run(command + " -w '\\n%{http_code}'", shell=True, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        body, _, status = out.stdout.rpartition("\n")
        assert out.returncode == 0 and status == "200", (line, out.stdout[-500:], out.stderr)
        if "/function/digits" in line:
            assert '"label": 3' in body
        if "/v2/models/digits/infer" in line:  # the model's tensor, not the handler's answer
            [output] = json.loads(body)["outputs"]
            assert output["name"] == "probabilities" and output["shape"] == [1, 10]
            assert max(range(10), key=output["data"].__getitem__) == 3
        if "/function/squeezenet" in line or "/function/resnet50" in line:
            assert '"top5"' in body
        if "/workflow/classify" in line or "/workflow/ensemble" in line:
            assert len(json.loads(body)["top5"]) == 5
        if "/workflow/cutout" in line:
            assert 0 <= json.loads(body)["coverage"] <= 1


def test_async_curl_lines_work_as_printed(examples: DaemonProcess) -> None:
    """The async section's lines as a reader runs them in one shell: the first sends an async
    workflow call and sets `$id`; the others read its record, then its answer once it has
    one (until then the answer is a 202 with the call's status)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    accept, record, result = [
        line.replace("127.0.0.1:8080", f"127.0.0.1:{examples.port}")
        for line in _block("<!-- async-curl: begin -->")
    ]
    assert "/async-workflow/classify" in accept

    def bash(script: str) -> str:
        out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, (script, out.stdout[-500:], out.stderr)
        return out.stdout

    call_id = bash(f'{accept}\necho "$id"').strip()
    assert re.fullmatch(r"[0-9a-f]{32}", call_id), call_id

    def after_accept(line: str) -> tuple[int, Any]:
        """`line` in the shell the first line left (`$id` set), with its HTTP status."""
        body, _, status = bash(f"id={call_id}\n{line} -w '\\n%{{http_code}}'").rpartition("\n")
        return int(status), json.loads(body)

    status, doc = after_accept(record)
    assert status == 200 and (doc["kind"], doc["workflow"]) == ("workflow", "classify"), doc
    deadline = time.monotonic() + 60
    status, doc = after_accept(result)
    while status == 202 and time.monotonic() < deadline:
        assert doc["status"] in ("queued", "running"), doc
        time.sleep(0.2)
        status, doc = after_accept(result)
    assert status == 200 and len(doc["top5"]) == 5, doc


def test_cli_tour_works_as_printed(examples: DaemonProcess) -> None:
    lines = [line for line in _block("## The CLI") if not line.startswith("export ")]
    assert any(line.startswith("faasd deploy") for line in lines)
    env = {**os.environ, "FAASD_URL": examples.url,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for line in lines:
        out = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (line, out.stdout[-500:], out.stderr)
        if line.startswith("faasd list"):
            assert re.search(r"^squeezenet\s+\d+", out.stdout, re.M)
        if line.startswith("faasd invoke digits"):
            assert '"label": 3' in out.stdout


def test_example_functions_reject_corrupt_images_and_stay_healthy(
    examples: DaemonProcess,
) -> None:
    import json
    import urllib.error
    import urllib.request

    for name in EXAMPLES:
        req = urllib.request.Request(f"{examples.url}/function/{name}", method="POST",
                                     data=b"\x89PNG\r\n\x1a\n garbage",
                                     headers={"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=60)
        assert caught.value.code == 400
        assert "picture" in json.loads(caught.value.read())["error"]
    with urllib.request.urlopen(f"{examples.url}/healthz", timeout=10) as resp:
        deployed = [p for p in (REPO / "functions").iterdir()
                    if p.is_dir() and not p.name.startswith((".", "_"))]
        stages = [p for p in (REPO / "workflows").glob("*/*") if p.is_dir()]  # with theirs
        health = json.loads(resp.read())
        assert health["functions"] == len(deployed) + len(stages)  # all, examples or not
        assert health["workflows"] == 3
