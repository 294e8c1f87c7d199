"""Every Kubernetes object gpuforge renders, validated offline against the pinned Kubernetes version.

kubernetes-validate bundles JSON schemas generated from each minor's OpenAPI; strict mode rejects unknown fields at
every depth. It checks no enums and no name formats, so the few gpuforge renders are checked here too. The kubeadm
configuration has no OpenAPI schema: tests/unit/schemas/kubeadm-v1beta4.yml is a strict one written from kubeadm's
Go types (docs/kubernetes.md).
"""

import copy
import json
import re
from pathlib import Path

import jinja2
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import ROOT
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

ROLE = ROOT / "roles" / "gpu_device_plugin"
K8S_ROLE = ROOT / "roles" / "kubernetes"
K8S_DEFAULTS = yaml.safe_load((K8S_ROLE / "defaults/main.yml").read_text())
# The Kubernetes minor the cluster runs: the kubernetes role's, so the schemas follow the pin.
K8S_MINOR = K8S_DEFAULTS["kubernetes_version_minor"]
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _comment(text):
    """Ansible's `comment` filter with its defaults (enough for `ansible_managed | comment`)."""
    return "#\n" + "\n".join(f"# {line}" for line in str(text).splitlines()) + "\n#"


def _bool(value):
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


# Only the filters the templates may use: an unknown filter fails when a template compiles.
ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,  # Ansible's template module default
)
ENV.filters.update(comment=_comment, to_json=lambda v: json.dumps(v, ensure_ascii=False), bool=_bool)


def role_vars(**overrides):
    """The variables the role passes to its templates: its defaults, the per-node name, overrides."""
    values = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    values.update(
        ansible_managed="Ansible managed",
        __gpu_device_plugin_node_name="gpu-node-01.example.net",
        __gpu_device_plugin_labels={
            **values["gpu_device_plugin_node_labels"],
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        },
        __gpu_device_plugin_taints=[],
    )
    values.update(overrides)
    return values


def render(template, **overrides):
    docs = [d for d in yaml.safe_load_all(ENV.get_template(template).render(role_vars(**overrides))) if d]
    assert docs, f"{template} rendered no object"
    return docs


def _enum_errors(obj):
    """Checks the OpenAPI schemas leave out, for the fields gpuforge renders."""
    errors = []
    meta = obj.get("metadata", {})
    if "name" in meta and not DNS1123_SUBDOMAIN.match(meta["name"]):
        errors.append(f"metadata.name {meta['name']!r} is not a DNS-1123 subdomain")
    if "namespace" in meta and not DNS1123_LABEL.match(meta["namespace"]):
        errors.append(f"metadata.namespace {meta['namespace']!r} is not a DNS-1123 label")
    pod = obj.get("spec", {}).get("template", {}).get("spec") if obj["kind"] == "DaemonSet" else obj.get("spec", {})
    pod = pod or {}
    for tol in pod.get("tolerations", []):
        if tol.get("operator", "Equal") not in ("Exists", "Equal"):
            errors.append(f"toleration operator {tol['operator']!r}")
        if tol.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            errors.append(f"toleration effect {tol['effect']!r}")
    for taint in pod.get("taints", []) if obj["kind"] == "Node" else []:
        if taint["effect"] not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            errors.append(f"taint effect {taint['effect']!r}")
    if pod.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
        errors.append(f"restartPolicy {pod['restartPolicy']!r}")
    for c in pod.get("containers", []):
        if c.get("imagePullPolicy", "IfNotPresent") not in ("Always", "IfNotPresent", "Never"):
            errors.append(f"imagePullPolicy {c['imagePullPolicy']!r}")
    return errors


def validate(obj):
    """Strict schema validation plus the enum/name checks; raises on the first problem. An unknown kind raises
    SchemaNotFoundError: a failure, never a skip."""
    kubernetes_validate.validate(obj, K8S_MINOR, strict=True)
    errors = _enum_errors(obj)
    if errors:
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: " + "; ".join(errors))


def _ids(cases):
    return [f"{t}-{i}" for i, (t, _) in enumerate(cases)]


CASES = [
    ("runtimeclass.yml.j2", {}),
    ("device-plugin-daemonset.yml.j2", {}),
    (
        "device-plugin-daemonset.yml.j2",
        {"gpu_device_plugin_runtime_class": "", "gpu_device_plugin_mig_strategy": "mixed"},
    ),
    ("gpu-node.yml.j2", {}),
    (
        "gpu-node.yml.j2",
        {
            "__gpu_device_plugin_taints": [
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            ]
        },
    ),
    ("smoke-pod.yml.j2", {}),
    ("smoke-pod.yml.j2", {"gpu_device_plugin_runtime_class": ""}),
]


def test_every_template_is_covered():
    templates = {p.name for p in (ROLE / "templates").glob("*.yml.j2")}
    assert templates == {t for t, _ in CASES}


@pytest.mark.parametrize(("template", "overrides"), CASES, ids=_ids(CASES))
def test_rendered_objects_validate_strictly(template, overrides):
    for obj in render(template, **overrides):
        validate(obj)


def test_schemas_of_the_pinned_minor_are_bundled():
    assert K8S_MINOR in {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    rc = render("runtimeclass.yml.j2")[0]
    assert kubernetes_validate.validate(rc, K8S_MINOR, strict=True) == K8S_MINOR


def test_daemonset_follows_the_pinned_release():
    ds = render("device-plugin-daemonset.yml.j2")[0]
    pod = ds["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert ctr["image"] == "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"name": "MIG_STRATEGY", "value": "none"} in ctr["env"]
    no_rc = render("device-plugin-daemonset.yml.j2", gpu_device_plugin_runtime_class="")[0]
    assert "runtimeClassName" not in no_rc["spec"]["template"]["spec"]


def test_daemonset_stays_off_the_nodes_whose_gpus_vllm_holds():
    pod = render("device-plugin-daemonset.yml.j2")[0]["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "gpuforge.io/gpu-owner", "operator": "NotIn", "values": ["vllm"]}]
    node = render("gpu-node.yml.j2", __gpu_device_plugin_labels={"nvidia.com/gpu.present": "true",
                                                                 "gpuforge.io/gpu-owner": "vllm"})[0]
    validate(node)
    assert node["metadata"]["labels"]["gpuforge.io/gpu-owner"] == "vllm"


def test_smoke_pod_requests_one_gpu():
    pod = render("smoke-pod.yml.j2")[0]
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pod["spec"]["nodeName"] == "gpu-node-01.example.net"


# Deliberately broken objects: each must fail, or the validation above proves nothing.
def _broken():
    rc = render("runtimeclass.yml.j2")[0]
    ds = render("device-plugin-daemonset.yml.j2")[0]
    pod = render("smoke-pod.yml.j2")[0]
    cases = {}
    cases["unknown field (typo)"] = dict(copy.deepcopy(rc), handlr="nvidia")
    cases["missing required field"] = {k: v for k, v in rc.items() if k != "handler"}
    d = copy.deepcopy(ds)
    d["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    cases["unknown field deep in a pod template"] = d
    d = copy.deepcopy(ds)
    d["spec"]["template"]["spec"]["tolerations"][0]["effect"] = "NoSchedul"
    cases["toleration effect not an enum value"] = d
    d = copy.deepcopy(pod)
    d["metadata"]["name"] = "gpuforge-smoke-GPU_01"
    cases["name not DNS-1123"] = d
    d = copy.deepcopy(ds)
    d["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "8080"}]
    cases["wrong type"] = d
    cases["kind without a schema"] = dict(copy.deepcopy(rc), kind="RuntimeKlass")
    return cases


@pytest.mark.parametrize("case", sorted(_broken()))
def test_broken_object_fails(case):
    with pytest.raises((kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError, AssertionError)):
        validate(_broken()[case])


# kubeadm configuration: the kubernetes role's templates rendered for init and for both kinds of join, checked
# against the strict kubeadm v1beta4 schema (tests/unit/schemas/kubeadm-v1beta4.yml).
KUBEADM_SCHEMA = yaml.safe_load((Path(__file__).parent / "schemas" / "kubeadm-v1beta4.yml").read_text())
KUBEADM_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(K8S_ROLE / "templates")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
)
KUBEADM_ENV.filters.update(
    comment=_comment,
    to_json=lambda v: json.dumps(v, ensure_ascii=False),
    bool=_bool,
    regex_replace=lambda v, pattern, repl="": re.sub(pattern, repl, str(v)),
    unique=lambda v: list(dict.fromkeys(v)),
)
GROUPS = {"kube_control_plane": ["cp-01", "cp-02"], "kube_nodes": ["hgx-01"]}


def kubeadm_vars(host, **overrides):
    values = dict(K8S_DEFAULTS)
    values.update(yaml.safe_load((K8S_ROLE / "vars/main.yml").read_text()))
    values.update(
        ansible_managed="Ansible managed",
        inventory_hostname=host,
        groups=GROUPS,
        __kubernetes_node_name=host,
        __kubernetes_node_ip="10.0.0.11",
        __kubernetes_endpoint="k8s-api.example.net:6443",
        __kubernetes_kubeadm_version={"stdout": "v1.34.2\n"},
        __kubernetes_join_creds={
            "token": "abcdef.0123456789abcdef",
            "ca_cert_hash": "sha256:" + "0" * 64,
            "certificate_key": "a" * 64 + "\n",
        },
    )
    values.update(overrides)
    return values


def render_kubeadm(template, host, **overrides):
    text = KUBEADM_ENV.get_template(template).render(kubeadm_vars(host, **overrides))
    return [d for d in yaml.safe_load_all(text) if d]


KUBEADM_CASES = {
    "init": ("kubeadm-init.yml.j2", "cp-01", {}),
    "init schedulable, extra SANs": (
        "kubeadm-init.yml.j2",
        "cp-01",
        {"kubernetes_control_plane_schedulable": True, "kubernetes_api_cert_sans": ["10.0.0.100", "api.internal"]},
    ),
    "join control plane": ("kubeadm-join.yml.j2", "cp-02", {}),
    "join control plane schedulable": ("kubeadm-join.yml.j2", "cp-02", {"kubernetes_control_plane_schedulable": True}),
    "join worker": ("kubeadm-join.yml.j2", "hgx-01", {}),
}


def kubeadm_validator(kind):
    defs = schema_contents(f"kubernetes-json-schema/v{K8S_MINOR}.0-local-strict/_definitions.json", K8S_MINOR)
    registry = Registry().with_resources(
        [(defs["$id"], Resource.from_contents(defs)), (KUBEADM_SCHEMA["$id"], Resource.from_contents(KUBEADM_SCHEMA))]
    )
    return jsonschema.Draft202012Validator({"$ref": f"{KUBEADM_SCHEMA['$id']}#/$defs/{kind}"}, registry=registry)


def test_kubeadm_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(KUBEADM_SCHEMA)


def test_every_kubeadm_template_is_covered():
    templates = {p.name for p in (K8S_ROLE / "templates").glob("kubeadm-*.yml.j2")}
    assert templates == {t for t, _, _ in KUBEADM_CASES.values()}


@pytest.mark.parametrize("case", sorted(KUBEADM_CASES))
def test_rendered_kubeadm_configuration_validates(case):
    template, host, overrides = KUBEADM_CASES[case]
    docs = render_kubeadm(template, host, **overrides)
    for doc in docs:
        kubeadm_validator(doc["kind"]).validate(doc)
    kinds = [d["kind"] for d in docs]
    if template == "kubeadm-init.yml.j2":
        assert kinds == ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"]
    else:
        assert kinds == ["JoinConfiguration"]


def test_init_configuration_carries_the_cluster_settings():
    init, cluster, kubelet = render_kubeadm("kubeadm-init.yml.j2", "cp-01")
    assert init["nodeRegistration"]["name"] == "cp-01"
    assert init["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": "10.0.0.11"}]
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.0.0.11", "bindPort": 6443}
    assert "taints" not in init["nodeRegistration"]  # kubeadm's control-plane taint stays
    assert cluster["kubernetesVersion"] == "v1.34.2"
    assert cluster["controlPlaneEndpoint"] == "k8s-api.example.net:6443"
    assert cluster["networking"] == {
        "podSubnet": "10.244.0.0/16",
        "serviceSubnet": "10.96.0.0/12",
        "dnsDomain": "cluster.local",
    }
    assert cluster["apiServer"]["certSANs"] == ["k8s-api.example.net", "10.0.0.11"]
    assert kubelet["cgroupDriver"] == "systemd"
    assert kubelet["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
    schedulable = render_kubeadm("kubeadm-init.yml.j2", "cp-01", kubernetes_control_plane_schedulable=True)[0]
    assert schedulable["nodeRegistration"]["taints"] == []


def test_join_configuration_by_role():
    (cp,) = render_kubeadm("kubeadm-join.yml.j2", "cp-02")
    (worker,) = render_kubeadm("kubeadm-join.yml.j2", "hgx-01")
    assert cp["controlPlane"]["certificateKey"] == "a" * 64
    assert cp["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == "10.0.0.11"
    assert "controlPlane" not in worker
    for doc in (cp, worker):
        assert doc["discovery"]["bootstrapToken"] == {
            "apiServerEndpoint": "k8s-api.example.net:6443",
            "token": "abcdef.0123456789abcdef",
            "caCertHashes": ["sha256:" + "0" * 64],
        }


@pytest.mark.parametrize(
    ("case", "path", "value"),
    [
        ("init", [1, "apiServer", "timeoutForControlPlane"], "4m0s"),  # v1beta3 only
        ("init", [1, "apiServer", "extraArgs"], {"audit-log-path": "-"}),  # v1beta3 map form
        ("init", [0, "nodeRegistration", "taints"], [{"key": "a"}]),  # core Taint: effect required
        ("init", [0, "nodeRegistration", "kubeletExtraArgs"], {"node-ip": "10.0.0.11"}),  # v1beta3 map form
        ("init", [2, "cgroupDriver"], "systemD"),
        ("join worker", [0, "discovery", "bootstrapToken", "token"], "not-a-token"),
        ("join control plane", [0, "controlPlane", "certificateKey"], "short"),
        ("join control plane", [0, "discovery", "bootstrapToken", "caCertHashes"], ["md5:abc"]),
    ],
)
def test_broken_kubeadm_configuration_fails(case, path, value):
    template, host, overrides = KUBEADM_CASES[case]
    docs = render_kubeadm(template, host, **overrides)
    doc = docs[path[0]]
    target = doc
    for key in path[1:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        kubeadm_validator(doc["kind"]).validate(doc)
