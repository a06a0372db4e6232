"""The `faasd` command: run the daemon (`up`, `install`) and talk to it (everything else).

Client commands reach the daemon at `--gateway` or `$FAASD_URL` (default
http://127.0.0.1:8080), print tables for people and JSON with `-o json`, and exit non-zero with
one clear line on stderr when something fails (2 when the daemon cannot be reached).
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from faasd.auth.cli import add_token_commands, read_client_token
from faasd.auth.store import TokenError
from faasd.client import Client, ClientError, gateway_url
from faasd.config import ConfigError, faasd_version, load_config
from faasd.durable.cli import add_invocation_commands
from faasd.errors import FaasdError

EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _OFFLINE:
        # The scheduling library's commands parse their own arguments (and --help).
        return _OFFLINE[argv[0]](argv[1:])
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ClientError as exc:
        print(f"faasd: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # the reader went away (`faasd nodes | head`): stop quietly, as `cat` does; what is
        # still buffered goes nowhere, so the flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (ConfigError, OSError, TokenError, FaasdError) as exc:  # FaasdError: e.g. an engine
        print(f"faasd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faasd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_command(name: str, help_text: str, func: Callable[[Any], int]) -> Any:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-g", "--gateway", help="daemon URL (default $FAASD_URL or %(default)s)")
        p.add_argument("-o", "--output", choices=("table", "json"), default="table")
        p.add_argument("--token-file", type=Path,
                       help="file holding the API token (default: $FAASD_TOKEN)")
        p.set_defaults(func=func)
        return p

    up = sub.add_parser("up", help="run the daemon in the foreground")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--state-dir", type=Path)
    up.add_argument("--functions", type=Path, help="deploy every function directory in DIR")
    up.add_argument("--workflows", type=Path,
                    help="then deploy every workflow directory (with a workflow.yaml) in DIR")
    up.add_argument("--config", type=Path, help="faasd.yaml with the daemon's settings")
    up.add_argument("--scheduler", help="policy name (default esg)")
    up.add_argument("--port-file", type=Path, help="write the bound port here once ready")
    up.add_argument("--log-level", default=None)
    cluster = up.add_argument_group("cluster (none of these: one node, its own leader)")
    cluster.add_argument("--cluster-addr", metavar="HOST[:PORT]",
                         help="gossip on this address (Serf; port 7946)")
    cluster.add_argument("--join", nargs="+", metavar="HOST[:PORT]",
                         help="join the cluster through these nodes' gossip addresses")
    cluster.add_argument("--voter", action="store_true", default=None,
                         help="run an etcd member here and stand for leader")
    cluster.add_argument("--etcd", metavar="URL,...",
                         help="use this etcd cluster for the election instead")
    cluster.add_argument("--gossip-key-file", type=Path, metavar="FILE",
                         help="encrypt gossip with this key (`serf keygen > FILE`)")
    cluster.add_argument("--node-name", help="this node's name (default: the host name)")
    up.set_defaults(func=_up)

    deploy = client_command(
        "deploy", "deploy (or redeploy) a function or workflow directory", _deploy)
    deploy.add_argument("directory", type=Path)
    deploy.add_argument("--name", help="function name (default: the directory's name)")
    deploy.add_argument("--upload", action="store_true",
                        help="send the directory as a tar archive (for a daemon on another host)")

    client_command("list", "list deployed functions", _list)
    client_command("nodes", "list the cluster's nodes, its leader, and this node's vCPUs and "
                   "GPU slices", _nodes)
    client_command("workflows", "list deployed workflows", _workflows)
    describe = client_command("describe", "show one function or workflow", _describe)
    describe.add_argument("name")

    invoke = client_command("invoke", "call a function or workflow; body from --data, @file "
                            "or stdin",
                            _invoke)
    invoke.add_argument("name")
    invoke.add_argument("-d", "--data", help="the body, or @FILE to read it from a file")
    invoke.add_argument("--content-type", help="default: guessed from @FILE, else JSON")
    invoke.add_argument("-v", "--verbose", action="store_true", help="print call headers")
    invoke.add_argument("--async", dest="async_call", action="store_true",
                        help="call asynchronously: print the call id (see `faasd result ID`)")
    invoke.add_argument("--callback-url", help="with --async: where to POST the answer")
    invoke.add_argument("--idempotency-key", help="the same key and body make one call only")

    remove = client_command("remove", "remove a function or workflow", _remove)
    remove.add_argument("name")

    profile = client_command("profile", "measure a function's latency per configuration "
                             "(--show/--png: the stored profile only)", _profile)
    profile.add_argument("name")
    profile.add_argument("--show", action="store_true", help="print the stored table")
    profile.add_argument("--png", type=Path, metavar="FILE", help="draw latency and cost")
    profile.add_argument("--small", action="store_true", help="the small grid of a deploy")

    verify = sub.add_parser("verify", help="check installed versions against their digests "
                            "(restoring damaged copies from unchanged sources)")
    verify.add_argument("--state-dir", type=Path)
    verify.add_argument("--config", type=Path, help="faasd.yaml with the daemon's settings")
    verify.set_defaults(func=_verify)

    install = sub.add_parser("install", help="install the systemd unit and start faasd")
    install.add_argument("--dry-run", action="store_true", help="print what would be done")
    install.set_defaults(func=_install)

    version = client_command("version", "print client and daemon versions", _version)
    version.set_defaults(func=_version)
    add_token_commands(sub)
    add_invocation_commands(client_command, _client)

    for name, help_text in _OFFLINE_HELP.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _esg_plan(argv: list[str]) -> int:
    """`faasd plan FILE` plans an instance offline; `faasd plan WORKFLOW` asks the daemon."""
    first = next((a for a in argv if not a.startswith("-") or a == "-"), None)
    if first is not None and first != "-" and not Path(first).exists():
        return _workflow_plan(argv)
    from esg.cli import main as esg_main

    return esg_main(["plan", *argv])


def _stage_text(function: str, config: dict[str, Any]) -> str:
    gpu = f" {config['vgpu']} GPU units" if config["vgpu"] else ""
    return (f"{function} batch {config['batch']} x {config['vcpu']} vCPU{gpu} "
            f"{config['latency_ms']:.3g} ms")


def _workflow_plan(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faasd plan", description="explain ESG's plan of a "
                                     "deployed workflow with the live profiles")
    parser.add_argument("workflow")
    parser.add_argument("-g", "--gateway", help="daemon URL (default $FAASD_URL)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("--token-file", type=Path,
                        help="file holding the API token (default: $FAASD_TOKEN)")
    args = parser.parse_args(argv)
    try:
        doc = _client(args).json("GET", f"/system/workflow/{args.workflow}/plan")
    except TokenError as exc:
        print(f"faasd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ClientError as exc:
        print(f"faasd: {exc.message}", file=sys.stderr)
        return exc.exit_code
    if args.output == "json":
        return _print_json(doc)
    state = "feasible" if doc["feasible"] else "infeasible even at the fastest configurations"
    print(f"workflow {doc['workflow']}: SLO {doc['slo_ms']:g} ms ({state}); scheduler "
          f"{doc['scheduler']}")
    for number, group in enumerate(doc["groups"], start=1):
        print(f"group {number}: {' '.join(group['functions'])}: budget {group['budget_ms']:.4g} "
              f"ms, done by {group['deadline_ms']:.4g} ms, fastest possible "
              f"{group['min_latency_ms']:.4g} ms")
        for plan in group["plans"]:
            label = "chosen" if plan["rank"] == 1 else f"#{plan['rank']}"
            stages = ", ".join(_stage_text(f, c) for f, c in plan["configs"].items())
            why = f"  -- lost: {plan['why_not']}" if plan["why_not"] else ""
            print(f"  {label}: {stages}; {plan['latency_ms']:.4g} ms, "
                  f"${plan['cost_per_request']:.3g}/request{why}")
        if not group["plans"]:
            print("  no profiled function here: runs FCFS-style at the functions' limits")
    if doc["unprofiled"]:
        print(f"not profiled yet (FCFS at their limits): {', '.join(doc['unprofiled'])}; "
              "run `faasd profile NAME`")
    return EXIT_OK


def _esg_split(argv: list[str]) -> int:
    from esg.cli import main as esg_main

    return esg_main(["split", *argv])


def _simulate(argv: list[str]) -> int:
    from esg.sim.cli import main as sim_main

    return sim_main(["report", *argv])


#: Offline commands of the scheduling library: no daemon needed; they parse their own flags.
_OFFLINE: dict[str, Callable[[list[str]], int]] = {
    "plan": _esg_plan,
    "split": _esg_split,
    "simulate": _simulate,
}
_OFFLINE_HELP = {
    "plan": "explain ESG's plan of a deployed WORKFLOW, or the top-K plans of an instance "
            "FILE (as python -m esg plan)",
    "split": "SLO groups and budgets of a workflow FILE (same as python -m esg split)",
    "simulate": "compare the schedulers in the simulator (same as python -m esg.sim report)",
}


# ---------------------------------------------------------------- the daemon


def _verify(args: argparse.Namespace) -> int:
    """What `faasd up` checks at start, offline: exit 1 if a function is left not ready."""
    from faasd.functions.registry import Registry

    config = load_config(args.config, overrides={"state_dir": args.state_dir})
    registry = Registry(config.state_dir.resolve(), config.function_defaults)
    report = registry.verify()
    for version in registry.list():
        print(f"{version.name} v{version.version}: {report.get(version.name, 'ok')}")
    return 1 if any(registry.problem(v.name) for v in registry.list()) else 0


def _up(args: argparse.Namespace) -> int:
    import gc

    from faasd import malloc
    from faasd.daemon import Daemon
    from faasd.sandbox.launcher import LaunchError
    from faasd.systemd import Notifier

    config = load_config(
        args.config,
        overrides={
            "host": args.host,
            "port": args.port,
            "state_dir": args.state_dir,
            "functions_dir": args.functions,
            "workflows_dir": args.workflows,
            "scheduler": args.scheduler,
            "log_level": args.log_level,
            "cluster_addr": args.cluster_addr,
            "join": args.join,
            "voter": args.voter,
            "etcd": args.etcd,
            "gossip_key_file": args.gossip_key_file,
            "node_name": args.node_name,
        },
    )
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    malloc.tune()  # process-wide: large bodies reuse the heap instead of fresh pages a call

    def ready(daemon: Daemon) -> None:
        # What startup left alive lives as long as the daemon: out of the collector's view,
        # a full collection no longer walks its ~66,000 objects, a 30-50 ms stall of the
        # event loop that every call in flight would wait out.
        gc.collect()
        gc.freeze()
        names = ", ".join(v.name for v, _ in daemon.services.catalog.list()) or "none"
        flows = ", ".join(w.spec.name for w in daemon.services.workflows.list())
        print(f"faasd {faasd_version()} listening on {daemon.url} (functions: {names}"
              + (f"; workflows: {flows})" if flows else ")"), flush=True)
        for name, error in daemon.load_errors.items():
            print(f"  could not load {name}: {error}", file=sys.stderr, flush=True)
        if args.port_file is not None:
            tmp = args.port_file.with_suffix(".tmp")
            tmp.write_text(str(daemon.port))
            tmp.replace(args.port_file)

    daemon = Daemon(config, notifier=Notifier())
    try:
        _run_async(daemon.serve_until_signalled(ready))
    except LaunchError as exc:  # no sandbox can start here (no bubblewrap, no namespaces)
        print(f"faasd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _run_async(coro: Any) -> None:
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; tolerate its absence
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def _install(args: argparse.Namespace) -> int:
    from faasd import install

    executable = install.faasd_executable()
    systemd = install.systemd_running()
    steps = install.plan(executable, install.CONFIG_PATH.exists(), systemd=systemd)
    if args.dry_run:
        print("faasd install would:")
        for step in steps:
            print(f"  {step.describe()}")
        if not systemd:
            print("  (not enable or start the service: systemd does not run on this host)")
        unit = next(s for s in steps if s.target == str(install.UNIT_PATH))
        print(f"\n--- {unit.target}\n{unit.content}", end="")
        return EXIT_OK
    import os

    if os.geteuid() != 0:
        raise ClientError("faasd install needs root: run it with sudo "
                          "(or with --dry-run to see what it would do)")
    try:
        install.apply(steps)
    except install.InstallError as exc:
        raise ClientError(str(exc)) from None
    print(install.next_steps(executable, systemd))
    return EXIT_OK


# ---------------------------------------------------------------- client commands


def _client(args: argparse.Namespace) -> Client:
    return Client(gateway_url(args.gateway), token=read_client_token(args.token_file))


def _deploy(args: argparse.Namespace) -> int:
    directory = args.directory.resolve()
    if not directory.is_dir():
        raise ClientError(f"{args.directory} is not a directory")
    started = time.monotonic()
    workflow = (directory / "workflow.yaml").is_file()
    if workflow and args.upload:
        raise ClientError("--upload sends one function; deploy a workflow from a directory on "
                          "the daemon's host (without --upload)")
    with _Progress(f"deploying {directory.name}", enabled=args.output == "table"):
        if workflow:
            doc: dict[str, Any] = {"path": str(directory)}
            if args.name:
                doc["name"] = args.name
            status = _client(args).json("POST", "/system/workflows", doc)
        elif args.upload:
            from urllib.parse import quote

            from faasd.archive import pack

            name = quote(args.name or directory.name)
            reply = _client(args).request(
                "POST", f"/system/functions?name={name}", pack(directory),
                {"Content-Type": "application/gzip"},
            )
            status = reply.json()
        else:
            doc = {"path": str(directory)}
            if args.name:
                doc["name"] = args.name
            status = _client(args).json("POST", "/system/functions", doc)
    if args.output == "json":
        return _print_json(status)
    took = time.monotonic() - started
    action = "redeployed" if status.get("replaced_version") else "deployed"
    if workflow:
        action += " workflow"
    elapsed = f"{took:.1f} s" if took >= 1 else f"{took * 1e3:.0f} ms"  # "0.0s" says nothing
    print(f"{action} {status['name']} v{status['version']} in {elapsed}: "
          f"POST {_client(args).url}{status['urls']['invoke']}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    functions = _client(args).json("GET", "/system/functions")
    if args.output == "json":
        return _print_json(functions)
    rows = [
        [f["name"], str(f["version"]), _tensors(f["inputs"]),
         str(f["settings"]["max_batch_size"]), f"{f['availableReplicas']}/{f['replicas']}",
         str(f["invocationCount"])]
        for f in functions
    ]
    _print_table(["NAME", "VERSION", "INPUTS", "BATCH", "IDLE/ALIVE", "CALLS"], rows)
    return EXIT_OK


def _nodes(args: argparse.Namespace) -> int:
    doc = _client(args).json("GET", "/system/nodes")
    if args.output == "json":
        return _print_json(doc)
    rows = [
        [n["name"] + (" (self)" if n["name"] == doc["self"]["name"] else ""), n["address"],
         n["role"], n["status"], "yes" if n["leader"] else "",
         "" if n["term"] is None else str(n["term"]),
         "" if n.get("vcpu") is None else str(n["vcpu"]), *_reported(n.get("state"))]
        for n in doc["nodes"]
    ]
    _print_table(["NAME", "ADDRESS", "ROLE", "STATUS", "LEADER", "TERM", "VCPU",
                  "FREE VCPU", "QUEUED", "WARM", "REPORTED"], rows)
    if doc["leader"] is None:
        print(f"no leader at the moment (last term {doc['term']})")
    me = next((n for n in doc["nodes"] if n["name"] == doc["self"]["name"]), None)
    if me is not None and "total_vcpu" in me:
        print()
        _print_resources(me)
    return EXIT_OK


def _reported(state: dict[str, Any] | None) -> list[str]:
    """What a node last reported to the leader (only the leader shows it): free vCPUs, queued
    calls, idle warm sandboxes, and how long ago."""
    if state is None:
        return ["-", "-", "-", "-"]
    return [f"{state['free_vcpu']}/{state['total_vcpu']}", str(sum(state["queued"].values())),
            str(sum(w["idle"] for w in state["warm"])), f"{state['age_ms']:.0f} ms ago"]


def _print_resources(node: dict[str, Any]) -> None:
    """This node's vCPUs and GPU slices, a row per GPU."""
    vcpu = f"{node['free_vcpu']}/{node['total_vcpu']}"
    gpus = node.get("gpus") or []
    rows = [] if gpus else [[node["name"], vcpu, "-", "-", "-", "0/0", "-"]]
    for gpu in gpus:
        used = [i["profile"] + ("*" if i["in_use"] else "") for i in gpu["instances"]]
        rows.append([node["name"], vcpu, str(gpu["index"]), gpu["name"], gpu["mode"]
                     + ("" if gpu["healthy"] else " (lost)"),
                     f"{gpu['free_units']}/{gpu['total_units']}", " ".join(used) or "-"])
    _print_table(["NODE", "VCPU FREE/ALL", "GPU", "MODEL", "MODE", "UNITS FREE/ALL",
                  "MIG INSTANCES (* in use)"], rows)


def _workflows(args: argparse.Namespace) -> int:
    workflows = _client(args).json("GET", "/system/workflows")
    if args.output == "json":
        return _print_json(workflows)
    rows = [
        [w["name"], str(w["version"]), f"{w['slo_ms']:g}", " ".join(w["functions"]),
         ", ".join(_edge_text(e) for e in w["edges"]) or "-"]
        for w in workflows
    ]
    _print_table(["NAME", "VERSION", "SLO_MS", "FUNCTIONS", "EDGES"], rows)
    return EXIT_OK


def _edge_text(edge: dict[str, Any]) -> str:
    renames = ",".join(f"{k}:{v}" for k, v in edge.get("map", {}).items())
    return f"{edge['from']}->{edge['to']}" + (f"[{renames}]" if renames else "")


def _find(client: Client, name: str) -> tuple[str, Any]:
    """("function" | "workflow", its status) for `name`; the function's 404 if neither."""
    try:
        return "function", client.json("GET", f"/system/function/{name}")
    except ClientError as exc:
        if exc.status != 404:
            raise
        try:
            return "workflow", client.json("GET", f"/system/workflow/{name}")
        except ClientError:
            raise exc from None


def _describe(args: argparse.Namespace) -> int:
    client = _client(args)
    kind, f = _find(client, args.name)
    if kind == "workflow":
        return _describe_workflow(args, client, f)
    if args.output == "json":
        return _print_json(f)
    handler = [k for k, v in f["handler"].items() if v]
    rows = [
        ("Name", f["name"]),
        ("Version", str(f["version"])),
        ("Directory", f["directory"]),
        ("Inputs", _tensors(f["inputs"])),
        ("Outputs", _tensors(f["outputs"])),
        ("Handler", ", ".join(handler) or "none"),
        ("Batching", f"max {f['settings']['max_batch_size']}, "
                     f"delay {f['settings']['max_queue_delay_ms']} ms"),
        ("Resources", f"{f['settings']['vcpu']} vCPU, {f['settings']['memory_mb']} MB"),
        ("Timeout", f"{f['settings']['timeout_s']} s"),
        ("Sandboxes", f"{f['availableReplicas']} idle of {f['replicas']} alive"),
        ("Calls", str(f["invocationCount"])),
        ("Invoke", f"{client.url}{f['urls']['invoke']}"),
        ("V2", f"{client.url}{f['urls']['v2']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 2}}{value}")
    return EXIT_OK


def _describe_workflow(args: argparse.Namespace, client: Client, w: dict[str, Any]) -> int:
    if args.output == "json":
        return _print_json(w)
    rows = [
        ("Name", w["name"]),
        ("Version", str(w["version"])),
        ("SLO", f"{w['slo_ms']:g} ms"),
        ("Functions", " ".join(w["functions"])),
        ("Source", w["source"]),
        ("Sinks", ", ".join(w["sinks"])),
        ("Scheduler", w["scheduler"]),
        ("Invoke", f"{client.url}{w['urls']['invoke']}"),
        ("V2", f"{client.url}{w['urls']['v2']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 2}}{value}")
    print("Stages:")
    for name in w["functions"]:
        stage = w["function_status"][name]
        if not stage.get("version"):
            print(f"  {name}: not deployed")
            continue
        feeds = ", ".join(f"{f['input']} <- {f['from']}.{f['output']}" for f in stage["feeds"])
        print(f"  {name} v{stage['version']}: {feeds or 'the call body'} -> "
              f"{_tensors(stage['outputs'])}")
    return EXIT_OK


def _invoke(args: argparse.Namespace) -> int:
    body, guessed = _body(args.data)
    content_type = args.content_type or guessed
    headers = {"Content-Type": content_type}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    if args.callback_url:
        headers["X-Callback-Url"] = args.callback_url
    client = _client(args)
    prefix = "/async-" if args.async_call else "/"
    try:
        reply = client.request("POST", f"{prefix}function/{args.name}", body, headers)
    except ClientError as exc:
        if exc.status != 404:
            raise
        # No function of that name (nothing ran): a workflow, then. Asked by calling it, not
        # by reading its description, which needs an admin token where an invoke one calls.
        try:
            reply = client.request("POST", f"{prefix}workflow/{args.name}", body, headers)
        except ClientError as again:
            if again.status != 404:
                raise
            raise ClientError(f"no function or workflow named {args.name!r}; deploy one with "
                              "faasd deploy DIR", status=404) from None
    if args.async_call:
        print(reply.headers["X-Call-Id"])
        return EXIT_OK
    if args.verbose:
        for key in ("X-Call-Id", "X-Duration-Seconds", "X-Faasd-Cold-Start", "X-Faasd-Device",
                    "X-Faasd-Node", "X-Faasd-Slo-Ms", "X-Faasd-Slo-Met", "Content-Type"):
            if key in reply.headers:
                print(f"{key}: {reply.headers[key]}", file=sys.stderr)
    sys.stdout.buffer.write(reply.body)
    if sys.stdout.isatty() and not reply.body.endswith(b"\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return EXIT_OK


def _body(data: str | None) -> tuple[bytes, str]:
    if data is None:
        if sys.stdin.isatty():
            raise ClientError("no body: pass --data '{...}', --data @file, or pipe it on stdin")
        return sys.stdin.buffer.read(), "application/json"
    if data.startswith("@"):
        path = Path(data[1:])
        guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            return path.read_bytes(), guessed
        except OSError as exc:
            raise ClientError(f"cannot read the body from {path}: {exc.strerror}") from None
    return data.encode(), "application/json"


def _is_workflow(client: Client, name: str) -> bool:
    try:
        client.json("GET", f"/system/workflow/{name}")
    except ClientError:
        return False
    return True


def _remove(args: argparse.Namespace) -> int:
    client = _client(args)
    if _is_workflow(client, args.name):
        result = client.json("DELETE", "/system/workflows", {"name": args.name})
        if args.output == "json":
            return _print_json(result)
        print(f"removed workflow {result['removed']} (was v{result['version']})")
        return EXIT_OK
    result = client.json("DELETE", "/system/functions", {"functionName": args.name})
    if args.output == "json":
        return _print_json(result)
    print(f"removed {result['removed']} (was v{result['version']})")
    return EXIT_OK


def _profile(args: argparse.Namespace) -> int:
    from faasd.profiles import command

    return command.run(_client(args), args.name, args.output, args.show, args.png, args.small)


def _version(args: argparse.Namespace) -> int:
    server: Any
    client = _client(args)  # a malformed --gateway is an error, not "not reachable"
    why = None
    try:
        server = client.json("GET", "/v2").get("version")
    except ClientError as exc:
        server = None
        why = "not reachable" if exc.exit_code == EXIT_UNREACHABLE else exc.message
    if args.output == "json":
        return _print_json({"client": faasd_version(), "server": server}
                           | ({"error": why} if why else {}))
    print(f"client: faasd {faasd_version()}")
    print(f"server: {'faasd ' + server if server else why}")
    return EXIT_OK


# ---------------------------------------------------------------- output


def _tensors(specs: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{s['name']} {s['datatype']}[{','.join('N' if d < 0 else str(d) for d in s['shape'])}]"
        for s in specs
    )


def _print_json(doc: Any) -> int:
    print(json.dumps(doc, indent=2))
    return EXIT_OK


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


class _Progress:
    """A spinner with elapsed seconds on stderr while something slow runs (terminals only)."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self._label = label
        self._enabled = enabled and sys.stderr.isatty()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def __enter__(self) -> _Progress:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            self._done.set()
            self._thread.join()
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _spin(self) -> None:
        started = time.monotonic()
        frames = "|/-\\"
        i = 0
        while not self._done.wait(0.1):
            elapsed = time.monotonic() - started
            sys.stderr.write(f"\r{frames[i % 4]} {self._label} ({elapsed:.1f}s)")
            sys.stderr.flush()
            i += 1


if __name__ == "__main__":
    sys.exit(main())
