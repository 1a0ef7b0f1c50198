"""`redismq demo` as a real process (it reports what happened and leaves nothing running),
and docker-compose.yml, which cannot be run here (no Docker engine): parsed and checked for
real entry points and for hosts and ports that agree."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import click
import pytest
from conftest import ROOT

from redismq.cli.main import main
from redismq.urls import check_url


# -- the demo ---------------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_signs_users_up_reports_and_stops_everything(processes):
    # 30 sign-ups: #7 has an invalid address, #13 is at bounce.example, #4, #14 and #24
    # are submitted twice (see cli.demo.plan)
    proc = processes.start(
        "demo",
        "--signups",
        "30",
        "--rate",
        "30",
        env={"REDISMQ_URL": "", "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
    )
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert "30 users, 33 requests: 29 accounts created, 1 refused with 422" in output
    assert "28 received by the SMTP sink, 28 distinct: each user got exactly one" in output
    assert re.search(r"dead letters\s+1 ", output), output
    assert "3/3 double submits found the account and wrote no second message" in output
    assert "group analytics recorded 29 sign-ups" in output
    assert re.search(r"\d+ tasks/s", output)
    for section in ("Brokers", "Topics", "Groups", "Workers", "Latest dead letters"):
        assert section in output  # the dashboard, rendered once when not on a terminal
    pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
    ports = [int(p) for p in re.findall(r"(?:127\.0\.0\.1)?:(\d{4,5})\b", output)]
    assert len(pids) == 7, output  # 5 servers, the NameServer, the worker
    assert len(ports) >= 7, output  # 5 servers, the web app, the SMTP sink
    assert [p for p in pids if alive(p)] == []
    assert [p for p in ports if listening(p)] == []


# -- docker-compose.yml -----------------------------------------------------------------
def scalar(text: str):
    if text.startswith('"') and text.endswith('"'):
        return json.loads(text)
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    return text


def parse_yaml(text: str):
    """The YAML subset docker-compose.yml keeps to: block mappings and sequences, plain and
    quoted scalars, comments on their own lines."""
    lines = [
        (len(raw) - len(raw.lstrip(" ")), raw.strip())
        for raw in text.splitlines()
        if raw.strip() and not raw.strip().startswith("#")
    ]

    def block(i: int, indent: int):
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                items.append(scalar(lines[i][1][2:].strip()))
                i += 1
            return items, i
        mapping: dict = {}
        while i < len(lines) and lines[i][0] == indent:
            content = lines[i][1]
            key, sep, value = content.partition(": ")
            if not sep:
                assert content.endswith(":"), f"not in the subset: {content!r}"
                key, value = content[:-1], ""
            assert key not in mapping, f"duplicate key {key!r}"
            i += 1
            if value:
                mapping[key] = scalar(value.strip())
            elif i < len(lines) and lines[i][0] > indent:
                mapping[key], i = block(i, lines[i][0])
            else:
                mapping[key] = None
        return mapping, i

    value, end = block(0, 0)
    assert end == len(lines), f"not in the subset from line: {lines[end]!r}"
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    text = (ROOT / "docker-compose.yml").read_text()
    parsed = parse_yaml(text)
    try:
        import yaml
    except ImportError:
        pass
    else:
        assert yaml.safe_load(text) == parsed
    return parsed


def commands(service: dict) -> list[list[str]]:
    """The command(s) of a service, `sh -c "a ; b"` split into a and b."""
    argv = shlex.split(service["command"])
    if argv[:2] == ["sh", "-c"]:
        parts = [shlex.split(part) for part in re.split(r" ; | && ", argv[2])]
        return [p[1:] if p[0] == "exec" else p for p in parts]
    return [argv]


def option(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def redis_port(service: dict) -> int:
    argv = commands(service)[-1]
    return int(option(argv, "--port", "6379"))


def check_redismq(argv: list[str]) -> None:
    """Parse a `redismq ...` command line with the real click commands (not run)."""
    command: click.Command = main
    name, args = "redismq", argv[1:]
    while isinstance(command, click.Group):
        name, *args = args
        command = command.get_command(click.Context(command), name)
        assert command is not None, argv
    ctx = command.make_context(name, args)
    if command.name == "worker":
        from redismq.workers.loader import load_app

        load_app(ctx.params["app_spec"])


def test_compose_has_one_service_per_role_and_real_entry_points(compose):
    services = compose["services"]
    assert set(services) == {
        "meta",
        "b1",
        "b1-replica",
        "b2",
        "b2-replica",
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
        "setup",
        "nameserver",
        "worker",
        "web",
        "smtp",
        "dashboard",
    }
    from fastapi import FastAPI

    from examples.registration import smtp_sink

    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, (name, dep)
        for argv in commands(service):
            if argv[0] == "redismq":
                check_redismq(argv)
            elif argv[0] == "uvicorn":
                module, _, attr = argv[1].partition(":")
                assert isinstance(getattr(__import__(module, fromlist=[attr]), attr), FastAPI)
            elif argv[:2] == ["python", "-m"]:
                assert argv[2] == "examples.registration.smtp_sink"
                smtp_sink.parse_args(argv[3:])
            elif argv[0] == "redis-server":
                assert service["image"].startswith("redis:")
            else:
                assert argv[0] == "touch", argv  # the sentinels' empty config file
        if service.get("image") == "redismq:dev":
            assert service["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "'.[example]'" in dockerfile


def test_compose_hosts_and_ports_agree(compose):
    services = compose["services"]
    redis_services = {n for n, s in services.items() if s["image"].startswith("redis:")}
    brokers = set()
    for name, service in services.items():
        env = service.get("environment") or {}
        text = " ".join([service.get("command") or "", *map(str, env.values())])
        for url in re.findall(r"(?:redis|sentinel)://\S+", text):
            check_url(url)
            hosts = re.match(r"\w+://([^/]+)/", url).group(1).split(",")
            for host_port in hosts:
                host, _, port = host_port.rpartition(":")
                assert host in redis_services, (name, url)
                assert redis_port(services[host]) == int(port), (name, url)
            if url.startswith("sentinel://"):
                brokers.add(url.rpartition("/")[2])
                assert all(h.startswith("sentinel-") for h in hosts)
        if "SMTP_HOST" in env:
            smtp = commands(services[env["SMTP_HOST"]])[0]
            assert option(smtp, "--port") == env["SMTP_PORT"]
            assert env["REDISMQ_URL"] == "redis://meta:6379/0"
    assert brokers == {"b1", "b2"}
    for name in redis_services:
        argv = commands(services[name])[-1]
        if "--sentinel" in argv:
            monitored = {
                argv[i + 1]: (argv[i + 2], int(argv[i + 3]))
                for i, a in enumerate(argv)
                if a == "monitor"
            }
            assert monitored == {b: (b, redis_port(services[b])) for b in ("b1", "b2")}
            continue
        assert option(argv, "--maxmemory-policy") == "noeviction", name
        assert option(argv, "--appendonly") == "yes", name
        if name.endswith("-replica"):
            assert option(argv, "--replicaof") == name.removesuffix("-replica")
    web = commands(services["web"])[0]
    assert services["web"]["ports"] == [f"{option(web, '--port')}:{option(web, '--port')}"]
    assert f":{option(web, '--port')}/" in services["web"]["healthcheck"]["test"]


def test_the_yaml_subset_parser_reads_what_it_claims():
    text = 'a:\n  b: "x: y"\n  c:\n    - 1\n    - "two"\n  d:\n# note\ne: plain value\n'
    assert parse_yaml(text) == {
        "a": {"b": "x: y", "c": ["1", "two"], "d": None},
        "e": "plain value",
    }
    assert Path(ROOT / "docker-compose.yml").is_file()
