#!/usr/bin/env python3
"""Checks of deploy/monitoring/ for scripts/test-monitoring, against files and a live Prometheus.

  rules SRC OUT          writes the PrometheusRule SRC's spec (its `groups:`) to OUT, the plain
                         rules file promtool and Prometheus read; fails if an alert lacks a
                         summary or a runbook annotation
  post URL BODY N        POSTs the JSON BODY to URL N times, retrying each until it gets a 2xx
  live PROMETHEUS ...    waits (up to --timeout) until every check passes against the running
                         Prometheus at PROMETHEUS, then prints one line per check and exits 1 if
                         any failed:
                           --fact EXPR          EXPR returns at least one sample
                           --dashboard FILE     every panel query of FILE, with the Grafana
                                                variables substituted (--var NAME=VALUE,
                                                $__rate_interval etc. by fixed windows), is valid
                                                PromQL and returns at least one sample that is a
                                                number; every query variable returns values
                           --alert NAME:L=V     the alert NAME with label L=V is pending or firing
                           --no-alert NAME:L=V  no alert NAME with label L=V is pending or firing

Only the Python standard library and PyYAML (Debian's python3-yaml) are used.
"""

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# What Grafana puts in place of its interval variables on a dashboard showing the last few
# minutes of a scrape every 2 s (its $__rate_interval is at least four scrape intervals).
GRAFANA_INTERVALS = {
    "$__rate_interval": "30s",
    "$__interval": "10s",
    "$__range": "5m",
}


def rules(src, out):
    import yaml

    with open(src) as f:
        doc = yaml.safe_load(f)
    if doc.get("kind") != "PrometheusRule":
        sys.exit(f"{src}: not a PrometheusRule")
    missing = []
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            annotations = rule.get("annotations", {})
            for key in ("summary", "runbook"):
                if not annotations.get(key, "").strip():
                    missing.append(f"{rule['alert']}: no {key} annotation")
    if missing:
        sys.exit(f"{src}: " + "; ".join(missing))
    with open(out, "w") as f:
        yaml.safe_dump(doc["spec"], f, sort_keys=False, width=1000)


def post(url, body, times):
    deadline = time.monotonic() + 60
    sent = 0
    while sent < times:
        request = urllib.request.Request(
            url, data=body.encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if 200 <= response.status < 300:
                    sent += 1
                    continue
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"POST {url}: no 2xx answer within 60 s")
        time.sleep(0.5)


class Prometheus:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            # A bad query is answered 400 with the parser's error in the body.
            return json.load(e)

    def query(self, expr):
        """(samples, error): the instant vector's values, or why the query failed."""
        answer = self.get("/api/v1/query", query=expr)
        if answer.get("status") != "success":
            return None, f"{answer.get('errorType')}: {answer.get('error')}"
        data = answer["data"]
        if data["resultType"] in ("scalar", "string"):
            return [data["result"][1]], None
        if data["resultType"] == "matrix":
            return [v for series in data["result"] for _, v in series["values"]], None
        return [series["value"][1] for series in data["result"]], None

    def alerts(self):
        return self.get("/api/v1/alerts")["data"]["alerts"]


def substitute(expr, variables):
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    for name, value in variables.items():
        expr = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}|\$" + name + r"\b", lambda _: value, expr)
    if "$" in expr:
        raise ValueError(f"a variable is left unsubstituted: {expr}")
    return expr


def dashboard_checks(path, variables):
    """(name, expr, needs_a_number) for every panel query and query variable of the dashboard."""
    with open(path) as f:
        dashboard = json.load(f)
    checks = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query, re.S)
        if not m:
            raise ValueError(f"variable {var['name']}: only label_values(expr, label) is supported: {query}")
        expr = substitute(f"count by ({m.group(2)}) ({m.group(1)})", variables)
        checks.append((f"variable ${var['name']}", expr, False))

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                name = f"panel '{panel['title']}' query {target['refId']}"
                checks.append((name, substitute(target["expr"], variables), True))
    return checks


def alert_matcher(spec):
    name, _, selector = spec.partition(":")
    labels = dict(pair.split("=", 1) for pair in selector.split(",") if pair)
    return name, labels


def matching(alerts, name, labels):
    return [
        a
        for a in alerts
        if a["labels"].get("alertname") == name
        and a["state"] in ("pending", "firing")
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def live(args):
    prom = Prometheus(args.prometheus)
    variables = dict(v.split("=", 1) for v in args.var)
    checks = []  # (name, function returning (ok, detail))

    def query_check(name, expr, needs_number):
        def run():
            samples, error = prom.query(expr)
            if error:
                return False, f"invalid: {error}\n      {expr}"
            if not samples:
                return False, f"no data\n      {expr}"
            numbers = [float(v) for v in samples if not math.isnan(float(v))]
            if needs_number and not numbers:
                return False, f"only NaN\n      {expr}"
            shown = ", ".join(f"{v:g}" for v in sorted(numbers)[:4]) or "NaN"
            return True, f"{len(samples)} sample(s): {shown}{' …' if len(numbers) > 4 else ''}"

        checks.append((name, run))

    for expr in args.fact:
        query_check(f"fact {expr}", expr, False)
    for path in args.dashboard:
        for name, expr, needs_number in dashboard_checks(path, variables):
            query_check(name, expr, needs_number)
    for spec in args.alert:
        name, labels = alert_matcher(spec)

        def run(name=name, labels=labels):
            found = matching(prom.alerts(), name, labels)
            return bool(found), ", ".join(a["state"] for a in found) or "neither pending nor firing"

        checks.append((f"alert {spec} pending or firing", run))
    for spec in args.no_alert:
        name, labels = alert_matcher(spec)

        def run(name=name, labels=labels):
            found = matching(prom.alerts(), name, labels)
            return not found, ", ".join(a["state"] for a in found) or "quiet"

        checks.append((f"alert {spec} quiet", run))

    # Poll until everything passes or time is up: data and alerts appear within a few scrapes.
    deadline = time.monotonic() + args.timeout
    results = {}
    while True:
        for name, run in checks:
            if not results.get(name, (False,))[0]:
                results[name] = run()
        if all(ok for ok, _ in results.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    # `quiet` checks are judged once more at the end, when the pending alerts had their time.
    for name, run in checks:
        if name.endswith(" quiet"):
            results[name] = run()
    failed = 0
    for name, _ in checks:
        ok, detail = results[name]
        failed += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    print(f"monitoring checks: {len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rules")
    p.add_argument("src")
    p.add_argument("out")
    p = sub.add_parser("post")
    p.add_argument("url")
    p.add_argument("body")
    p.add_argument("times", type=int)
    p = sub.add_parser("live")
    p.add_argument("prometheus")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--dashboard", action="append", default=[])
    p.add_argument("--var", action="append", default=[])
    p.add_argument("--fact", action="append", default=[])
    p.add_argument("--alert", action="append", default=[])
    p.add_argument("--no-alert", action="append", default=[])
    args = parser.parse_args()
    if args.command == "rules":
        rules(args.src, args.out)
    elif args.command == "post":
        post(args.url, args.body, args.times)
    else:
        sys.exit(live(args))


if __name__ == "__main__":
    main()
