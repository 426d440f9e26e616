"""The image's recipe: what it runs as, what it pins, and a health check that follows the UI's port.
(Building the image needs Docker; these read the Dockerfile and run its health check here.)"""
import http.server
import json
import os
import re
import subprocess
import sys
import threading

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instruction(name: str) -> str:
    """The instruction's text, continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    found = [line for line in joined.splitlines() if line.startswith(name + " ")]
    assert found, f"no {name} in the Dockerfile"
    return found[-1][len(name) + 1:]


def health_check_command() -> list[str]:
    text = instruction("HEALTHCHECK")
    return json.loads(text[text.index("CMD") + 3:].strip())


def run_health_check(port: int) -> int:
    cmd = [sys.executable if c == "python" else c for c in health_check_command()]
    return subprocess.run(cmd, env={**os.environ, "WORKBENCH_PORT": str(port)}, timeout=30).returncode


def test_the_image_runs_as_a_user_and_serves_the_workspace_on_7860():
    assert instruction("USER") not in ("root", "0")
    assert "7860" in instruction("EXPOSE")
    assert "/workspace" in instruction("VOLUME")
    assert re.search(r"WORKBENCH_HOST=0\.0\.0\.0", DOCKERFILE) and re.search(r"WORKBENCH_PORT=7860", DOCKERFILE)


def test_the_health_check_asks_the_port_the_ui_serves_on():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert run_health_check(port) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert run_health_check(port) != 0          # nothing listens there any more
