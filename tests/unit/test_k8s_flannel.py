"""The kubernetes role's Flannel manifest, rendered with the role's variables and validated offline.

The template follows Flannel v0.27.4's Documentation/kube-flannel.yml (docs/kubernetes.md, "CNI: Flannel");
these tests check that what gpuforge injects (images, pod subnet, backend, --iface-can-reach) still gives valid
Kubernetes objects and valid JSON in the ConfigMap.
"""

import copy
import json

import jinja2
import jinja2.meta
import kubernetes_validate
import pytest
import yaml
from conftest import ROOT
from test_k8s_schemas import K8S_MINOR, _comment, validate

TEMPLATE = "cni-flannel.yml.j2"
FLANNEL_VARS = {
    "ansible_managed": "Ansible managed",
    "kubernetes_flannel_image": "ghcr.io/flannel-io/flannel:v0.27.4",
    "kubernetes_flannel_cni_plugin_image": "ghcr.io/flannel-io/flannel-cni-plugin:v1.8.0-flannel1",
    "kubernetes_pod_subnet": "10.244.0.0/16",
    "kubernetes_flannel_backend": "vxlan",
    "__kubernetes_flannel_iface_can_reach": "",
}

# The same filters and settings as test_k8s_schemas.ENV (Ansible's template defaults), on this role's templates.
ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(ROOT / "roles" / "kubernetes" / "templates")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
)
ENV.filters.update(comment=_comment, to_json=lambda v: json.dumps(v, ensure_ascii=False))


def render_text(**overrides):
    return ENV.get_template(TEMPLATE).render({**FLANNEL_VARS, **overrides})


def render(**overrides):
    return [d for d in yaml.safe_load_all(render_text(**overrides)) if d]


def by_kind(docs, kind):
    (obj,) = [d for d in docs if d["kind"] == kind]
    return obj


def flanneld(docs):
    pod = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    return ctr


CASES = {
    "upstream defaults": {},
    "iface-can-reach set": {"__kubernetes_flannel_iface_can_reach": "10.10.0.1"},
    "other subnet and backend": {"kubernetes_pod_subnet": "10.32.0.0/12", "kubernetes_flannel_backend": "host-gw"},
}


def test_header_says_ansible_manages_it():
    assert render_text().startswith("#\n# Ansible managed\n#\n")


def test_renders_the_upstream_objects():
    kinds = [(d["kind"], d["metadata"]["name"]) for d in render()]
    assert kinds == [
        ("Namespace", "kube-flannel"),
        ("ClusterRole", "flannel"),
        ("ClusterRoleBinding", "flannel"),
        ("ServiceAccount", "flannel"),
        ("ConfigMap", "kube-flannel-cfg"),
        ("DaemonSet", "kube-flannel-ds"),
    ]
    ns = by_kind(render(), "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_validate_strictly(case):
    for obj in render(**CASES[case]):
        validate(obj)  # SchemaNotFoundError propagates: a failure, never a skip


def test_validation_uses_the_pinned_minor():
    assert kubernetes_validate.validate(by_kind(render(), "DaemonSet"), K8S_MINOR, strict=True) == K8S_MINOR


@pytest.mark.parametrize("case", sorted(CASES))
def test_configmap_holds_valid_json(case):
    overrides = CASES[case]
    data = by_kind(render(**overrides), "ConfigMap")["data"]
    cni = json.loads(data["cni-conf.json"])
    assert [p["type"] for p in cni["plugins"]] == ["flannel", "portmap"]
    net = json.loads(data["net-conf.json"])
    expected = {**FLANNEL_VARS, **overrides}
    assert net["Network"] == expected["kubernetes_pod_subnet"]
    assert net["Backend"]["Type"] == expected["kubernetes_flannel_backend"]
    assert net["EnableNFTables"] is False


def test_injected_strings_are_escaped_in_json():
    data = by_kind(render(kubernetes_flannel_backend='vx"lan\\'), "ConfigMap")["data"]
    assert json.loads(data["net-conf.json"])["Backend"]["Type"] == 'vx"lan\\'


def test_images_come_from_the_variables():
    pod = by_kind(render(), "DaemonSet")["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["initContainers"] + pod["containers"]}
    assert images == {
        "install-cni-plugin": FLANNEL_VARS["kubernetes_flannel_cni_plugin_image"],
        "install-cni": FLANNEL_VARS["kubernetes_flannel_image"],
        "kube-flannel": FLANNEL_VARS["kubernetes_flannel_image"],
    }


def test_iface_can_reach_only_when_set():
    assert flanneld(render())["args"] == ["--ip-masq", "--kube-subnet-mgr"]
    assert "--iface-can-reach=" not in render_text()
    args = flanneld(render(__kubernetes_flannel_iface_can_reach="10.10.0.1"))["args"]
    assert args == ["--ip-masq", "--kube-subnet-mgr", "--iface-can-reach=10.10.0.1"]


def test_template_uses_exactly_the_documented_variables():
    source = ENV.loader.get_source(ENV, TEMPLATE)[0]
    assert jinja2.meta.find_undeclared_variables(ENV.parse(source)) == set(FLANNEL_VARS)


# Deliberately broken objects: each must fail, or the validation above proves nothing.
def _broken():
    docs = render()
    cases = {}
    ds = copy.deepcopy(by_kind(docs, "DaemonSet"))
    ds["spec"]["template"]["spec"]["priorityClassNme"] = "system-node-critical"
    cases["misspelt DaemonSet field"] = ds
    ds = copy.deepcopy(by_kind(docs, "DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = "NET_ADMIN"
    cases["wrong type deep in the pod template"] = ds
    cm = copy.deepcopy(by_kind(docs, "ConfigMap"))
    cm["data"]["net-conf.json"] = {"Network": "10.244.0.0/16"}
    cases["ConfigMap data not a string"] = cm
    return cases


@pytest.mark.parametrize("case", sorted(_broken()))
def test_broken_object_fails(case):
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(_broken()[case])
