#!/usr/bin/python3
"""A test provider that misbehaves on purpose (see extprov tests).

Section named by TWINLET_SECTION, an object {"value": string} kept in
<root>/chaos/<section>. Every apply that writes appends a line to
<root>/chaos/<section>.applies. Arguments:
  --crash-in METHOD   exit(3) when METHOD is called (after a word on stderr)
  --once              ... only the first time (a marker file in the root)
  --hang-in METHOD    never answer METHOD
  --orphan-in METHOD  exit(4) leaving a child that holds stdout open
  --garbage-in METHOD write a line that is not JSON-RPC instead of answering
  --protocol V        answer initialize with protocol version V
  --depends-on IDS    describe these dependencies (comma-separated)
  --scope             describe a cloud scope: the twin may not set a value
                      that a deny glob (default "secret*") matches
"""
import fnmatch
import json
import os
import sys
import time

args = sys.argv[1:]


def opt(name):
    return args[args.index(name) + 1] if name in args else None


SECTION = os.environ.get("TWINLET_SECTION", "chaos")
SCHEMA = {"type": "object", "additionalProperties": False, "properties": {"value": {"type": "string"}}}


def send(m):
    sys.stdout.write(json.dumps(m) + "\n")
    sys.stdout.flush()


def path(env, suffix=""):
    return os.path.join(env["root"], "chaos", SECTION + suffix)


def misbehave(method, env):
    if opt("--crash-in") == method:
        marker = path(env, ".crashed")
        if "--once" not in args or not os.path.exists(marker):
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            open(marker, "w").close()
            print("chaos: crashing in %s on purpose" % method, file=sys.stderr, flush=True)
            os._exit(3)
    if opt("--orphan-in") == method:
        if os.fork() == 0:  # a child that keeps stdout and stderr open
            time.sleep(3600)
        os._exit(4)
    if opt("--hang-in") == method:
        print("chaos: hanging in %s" % method, file=sys.stderr, flush=True)
        time.sleep(3600)
    if opt("--garbage-in") == method:
        sys.stdout.write("hello from a print statement\n")
        sys.stdout.flush()
        time.sleep(3600)


for line in sys.stdin:
    req = json.loads(line)
    m, p, rid = req["method"], req.get("params") or {}, req["id"]
    if "env" in p:
        misbehave(m, p["env"])
    elif opt("--hang-in") == m:  # initialize, describe
        time.sleep(3600)
    if m == "initialize":
        res = {"protocolVersion": opt("--protocol") or "1.0", "name": "chaos"}
    elif m == "describe":
        res = {"id": SECTION, "kind": "object", "schema": SCHEMA, "version": "0.1"}
        if opt("--depends-on"):
            res["dependsOn"] = opt("--depends-on").split(",")
        if "--scope" in args:
            res.update({"cloudScope": True, "cloudDeny": ["secret*"]})
    elif m == "cloudScope":
        v, rules = p["twin"].get("value"), p["rules"]
        errs = []
        if v is not None:
            for g in rules.get("deny") or []:
                if fnmatch.fnmatchcase(v, g):
                    errs.append({"pointer": "/value", "message": "%r is denied to the twin by %s" % (v, g)})
            if rules.get("allow") and not any(fnmatch.fnmatchcase(v, g) for g in rules["allow"]):
                errs.append({"pointer": "/value", "message": "%r is not allowed to the twin" % v})
        res = {"errors": errs}
    elif m == "decode":
        res = {"spec": p["section"]}
    elif m == "observe":
        try:
            with open(path(p["env"])) as f:
                res = {"observed": {"value": f.read()}}
        except FileNotFoundError:
            res = {"observed": {}}
    elif m == "plan":
        want, have = p["spec"].get("value"), p["observed"].get("value")
        res = {"changes": [] if want is None or want == have else
               [{"action": "Update" if have is not None else "Create", "item": "value", "before": have or "", "after": want, "data": {"value": want}}]}
    elif m == "apply":
        env, value = p["env"], p["change"]["data"]["value"]
        os.makedirs(os.path.dirname(path(env)), exist_ok=True)
        with open(path(env, ".applies"), "a") as f:
            f.write(value + "\n")
        with open(path(env), "w") as f:
            f.write(value)
        res = {}
    elif m == "shutdown":
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
        break
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no " + m}})
        continue
    send({"jsonrpc": "2.0", "id": rid, "result": res})
