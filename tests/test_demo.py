"""``python -m trillium demo``: the chat room, its page, and two real browser tabs.

The room is tested in-process with trillium's client (the page and its headers, the
origin check, presence, broadcast, history, renames, the limits), then end to end:
the demo runs as a subprocess, headless Chromium opens two tabs on it, driven through
the DevTools protocol over trillium's own WebSocket client; the tabs join, chat, one
leaves and the other sees it, and a screenshot is saved to ``artifacts/demo.png``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trillium
from trillium.demo import MAX_NAME, MAX_TEXT, ChatRoom

from ._support import TEST_TIMEOUT, port_of
from .interop._helpers import kill_process_group, skip_or_fail_in_ci

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


# ----------------------------------------------------------------------- in process


@asynccontextmanager
async def chat_room() -> AsyncIterator[tuple[ChatRoom, int]]:
    room = ChatRoom()
    async with room.serve("127.0.0.1", 0) as server:
        yield room, port_of(server)


async def http_get(port: int, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET: status, headers (lower-case names), body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = "".join(f"{h}\r\n" for h in (f"Host: 127.0.0.1:{port}", *headers))
        await stream.send_all(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body


async def next_event(ws: trillium.Connection, kind: str) -> dict[str, Any]:
    """The next event of type ``kind`` (others are skipped)."""
    while True:
        event: dict[str, Any] = json.loads(await ws.recv())
        if event["type"] == kind:
            return event


async def test_the_page_is_served_by_trillium_on_the_websocket_port() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with chat_room() as (_, port):
            status, headers, body = await http_get(port, "/")
            assert status == 200
            assert headers["content-type"] == "text/html; charset=utf-8"
            assert "default-src 'self'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert int(headers["content-length"]) == len(body)
            assert b"<title>trillium chat</title>" in body and b'src="/chat.js"' in body
            status, headers, body = await http_get(port, "/chat.js")
            assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
            assert b"new WebSocket" in body
            status, headers, _ = await http_get(port, "/chat.css")
            assert (status, headers["content-type"]) == (200, "text/css; charset=utf-8")
            status, _, body = await http_get(port, "/nope")
            assert status == 404 and b"The chat room is at /" in body
            # /chat is the WebSocket: a plain GET there is not an upgrade.
            status, _, _ = await http_get(port, "/chat")
            assert status == 400


async def test_only_the_rooms_own_page_may_open_the_websocket() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with chat_room() as (_, port):
            for path, origin, status in [
                ("/chat?name=mallory", "https://evil.example", 403),
                ("/chat?name=mallory", f"http://localhost:{port}", 403),
                ("/elsewhere", None, 404),
            ]:
                with pytest.raises(trillium.InvalidStatus) as exc_info:
                    async with trillium.connect(f"ws://127.0.0.1:{port}{path}", origin=origin):
                        pass  # pragma: no cover
                assert exc_info.value.response.status_code == status
            async with trillium.connect(
                f"ws://127.0.0.1:{port}/chat?name=ada", origin=f"http://127.0.0.1:{port}"
            ) as ws:
                assert (await next_event(ws, "welcome"))["you"] == "ada"


async def test_members_see_who_is_online_and_every_message() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with chat_room() as (room, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/chat?name=ada") as ada:
                welcome = await next_event(ada, "welcome")
                assert welcome == {
                    "type": "welcome",
                    "you": "ada",
                    "history": [],
                    "online": ["ada"],
                }
                async with trillium.connect(f"ws://127.0.0.1:{port}/chat?name=bob") as bob:
                    assert (await next_event(bob, "welcome"))["online"] == ["ada", "bob"]
                    assert await next_event(ada, "join") == {
                        "type": "join",
                        "name": "bob",
                        "online": ["ada", "bob"],
                    }
                    await bob.send(json.dumps({"type": "message", "text": "hello, ada"}))
                    for ws in (ada, bob):
                        message = await next_event(ws, "message")
                        assert (message["from"], message["text"]) == ("bob", "hello, ada")
                    await ada.send(json.dumps({"type": "rename", "name": "Ada L."}))
                    rename = await next_event(bob, "rename")
                    assert (rename["old"], rename["name"]) == ("ada", "Ada L.")
                    assert rename["online"] == ["Ada L.", "bob"]
                    # A newcomer gets the recent history; a name taken gets a suffix.
                    async with trillium.connect(f"ws://127.0.0.1:{port}/chat?name=BOB") as bob2:
                        welcome = await next_event(bob2, "welcome")
                        assert welcome["you"] == "BOB-2"
                        assert [m["text"] for m in welcome["history"]] == ["hello, ada"]
                # bob's tab closed: ada sees him leave, twice (bob and BOB-2).
                leaves = [await next_event(ada, "leave"), await next_event(ada, "leave")]
                assert {e["name"] for e in leaves} == {"bob", "BOB-2"}
                assert leaves[-1]["online"] == ["Ada L."]
            with trio.fail_after(2):
                while room.members:
                    await trio.sleep(0.01)


async def test_names_and_messages_are_cleaned_and_bounded() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with chat_room() as (_, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/chat") as ws:
                assert (await next_event(ws, "welcome"))["you"] == "guest-1"
                await ws.send(json.dumps({"type": "rename", "name": "x" * 100 + "\x1b[31m"}))
                assert (await next_event(ws, "rename"))["name"] == "x" * MAX_NAME
                for ignored in ("not json", b"\x00binary", "[1, 2]", '{"type": "message"}'):
                    await ws.send(ignored)
                await ws.send(json.dumps({"type": "message", "text": " a\x00\nb  " + "c" * 2000}))
                message = await next_event(ws, "message")
                assert message["text"] == ("a b " + "c" * 2000)[:MAX_TEXT]
            # A message larger than max_size ends the connection with 1009.
            async with trillium.connect(f"ws://127.0.0.1:{port}/chat", max_size=None) as ws:
                await next_event(ws, "welcome")
                await ws.send("x" * 2**20)
                with pytest.raises(trillium.ConnectionClosed):
                    await next_event(ws, "never")
                assert ws.close_code == 1009


async def test_core_demo_is_still_a_command() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "trillium", "core-demo"], capture_stdout=True
    )
    out = result.stdout.decode()
    assert "Sec-WebSocket-Accept" in out and "The closing handshake" in out


# ----------------------------------------------------------------------- end to end


@asynccontextmanager
async def demo_process() -> AsyncIterator[tuple[trio.Process, str]]:
    """``python -m trillium demo --port 0``: yields it and the URL it printed."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trillium", "demo", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        output = b""
        with trio.fail_after(10):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the demo exited early: {output!r}"
                output += chunk
        first_line = output.decode().splitlines()[0]
        assert first_line.startswith("trillium chat demo on http://127.0.0.1:")
        yield process, first_line.split()[-1]
    finally:
        with trio.CancelScope(shield=True):
            kill_process_group(process)
            with trio.move_on_after(5):
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


async def test_demo_command_serves_the_room_and_stops_on_ctrl_c() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with demo_process() as (process, url):
            port = int(url.rsplit(":", 1)[1])
            status, _, body = await http_get(port, "/")
            assert status == 200 and b"trillium chat" in body
            async with trillium.connect(f"ws://127.0.0.1:{port}/chat") as ws:
                await next_event(ws, "welcome")
                process.send_signal(signal.SIGINT)
                with pytest.raises(trillium.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1001  # going away: the server shut down cleanly
            assert await process.wait() == 0


class DevTools:
    """Chromium's DevTools protocol, spoken over trillium's own WebSocket client.

    Commands go one at a time: ``call`` sends one and reads until its answer, and the
    events in between are dropped (the test polls the pages instead).
    """

    def __init__(self, ws: trillium.ClientConnection) -> None:
        self.ws = ws
        self.last_id = 0

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self.last_id += 1
        command: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if session is not None:
            command["sessionId"] = session
        await self.ws.send(json.dumps(command))
        while True:
            answer = json.loads(await self.ws.recv())
            if answer.get("id") == self.last_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]

    async def open_page(self, url: str) -> Page:
        target = await self.call("Target.createTarget", url=url)
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        return Page(self, target["targetId"], attached["sessionId"])


class Page:
    """One tab, attached through a flat DevTools session."""

    def __init__(self, devtools: DevTools, target: str, session: str) -> None:
        self.devtools, self.target, self.session = devtools, target, session

    async def call(self, method: str, **params: Any) -> Any:
        return await self.devtools.call(method, self.session, **params)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        with trio.fail_after(timeout):
            while not (value := await self.evaluate(expression)):
                await trio.sleep(0.05)
        return value

    async def online(self) -> list[str]:
        return await self.evaluate(  # type: ignore[no-any-return]
            "[...document.querySelectorAll('#online li')].map(li => li.textContent)"
        )

    async def log(self) -> list[str]:
        return await self.evaluate(  # type: ignore[no-any-return]
            "[...document.querySelectorAll('#log li')].map(li => li.textContent)"
        )

    async def say(self, text: str) -> None:
        """Type ``text`` in the message box and press Enter, as a person would."""
        await self.evaluate("document.getElementById('text').focus()")
        await self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                **({"text": "\r"} if kind == "keyDown" else {}),
            )


@asynccontextmanager
async def chromium_devtools(chromium: str, log: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with remote debugging on a free port; its DevTools session."""
    with tempfile.TemporaryDirectory(prefix="trillium-demo-chromium-") as profile:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--mute-audio",
            "--window-size=1000,640",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                [chromium, *flags],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                env={**os.environ, "HOME": profile},
            )
        try:
            # Chromium writes the port it picked, and the browser target's path, here.
            active = Path(profile) / "DevToolsActivePort"
            with trio.fail_after(20):
                while not (active.exists() and len(active.read_text().split()) >= 2):
                    if process.poll() is not None:
                        pytest.fail(
                            f"Chromium exited with {process.returncode}:\n"
                            + log.read_text(errors="replace")[-3000:]
                        )
                    await trio.sleep(0.05)
            port, path = active.read_text().split()[:2]
            async with trillium.connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
                yield DevTools(ws)
        finally:
            with trio.CancelScope(shield=True):
                kill_process_group(process)
                with trio.move_on_after(5):
                    await process.wait()


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_or_fail_in_ci(
            "Chromium is not installed (run tests/interop/setup.sh, or apt-get chromium)"
        )
    assert path is not None
    return path


async def test_two_browser_tabs_chat_and_one_sees_the_other_leave(
    chromium: str, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with (
            demo_process() as (_, url),
            chromium_devtools(chromium, tmp_path / "chromium.log") as devtools,
        ):
            ada = await devtools.open_page(f"{url}/?name=ada")
            await ada.wait_for("document.getElementById('status')?.dataset.state === 'online'")
            bob = await devtools.open_page(f"{url}/?name=bob")
            await bob.wait_for("document.getElementById('status')?.dataset.state === 'online'")

            # Both see who is online; ada saw bob join.
            await ada.wait_for("document.querySelectorAll('#online li').length === 2")
            assert await ada.online() == ["ada (you)", "bob"]
            assert await bob.online() == ["ada", "bob (you)"]
            assert "bob joined." in await ada.log()

            await ada.say("Hello from ada's tab")
            await bob.wait_for("document.querySelectorAll('#log .message').length === 1")
            await bob.say("Hi ada, bob here <b>not bold</b>")
            for page in (ada, bob):
                await page.wait_for("document.querySelectorAll('#log .message').length === 2")
                texts = await page.evaluate(
                    "[...document.querySelectorAll('#log .message')]"
                    ".map(li => [li.querySelector('.from').textContent,"
                    " li.querySelector('.text').textContent])"
                )
                assert texts == [
                    ["ada", "Hello from ada's tab"],
                    ["bob", "Hi ada, bob here <b>not bold</b>"],
                ]
            # Markup in a message is shown as text, never parsed.
            assert await ada.evaluate("document.querySelectorAll('#log b').length") == 0

            # bob closes his tab: ada sees him leave.
            await devtools.call("Target.closeTarget", targetId=bob.target)
            await ada.wait_for(
                "[...document.querySelectorAll('#log li')]"
                ".some(li => li.textContent === 'bob left.')"
            )
            await ada.wait_for("document.querySelectorAll('#online li').length === 1")
            assert await ada.online() == ["ada (you)"]
            assert await ada.evaluate("document.getElementById('count').textContent") == "(1)"

            shot = await ada.call("Page.captureScreenshot", format="png")
            png = base64.b64decode(shot["data"])

    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "demo.png").write_bytes(png)
