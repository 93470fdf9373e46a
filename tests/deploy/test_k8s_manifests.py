"""Every Kubernetes manifest the documentation ships (YAML blocks with apiVersion and kind in
docs/, kernelspec/ and examples/) is valid against the Kubernetes API's OpenAPI schema, strictly
(no unknown fields), offline: kubernetes-validate (PyPI) carries the schemas. There is no
cluster here: this checks the shapes, not that a cluster admits or runs them."""

from __future__ import annotations

import re

import pytest
from testenv import REPO
import yaml

K8S_VERSION = "1.30.0"  # ValidatingAdmissionPolicy is GA (admissionregistration.k8s.io/v1) from 1.30
BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.S | re.M)


def shipped_manifests() -> list[tuple[str, dict]]:
    out = []
    files = sorted([*REPO.glob("docs/**/*.md"), *REPO.glob("kernelspec/**/*.md"), *REPO.glob("kernelspec/**/*.y*ml"),
                    *REPO.glob("examples/**/*.md"), *REPO.glob("examples/**/*.y*ml"), REPO / "README.md"])
    for f in files:
        text = f.read_text()
        blocks = BLOCK.findall(text) if f.suffix == ".md" else [text]
        for i, block in enumerate(blocks):
            for doc in yaml.safe_load_all(block):
                if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                    out.append((f"{f.relative_to(REPO)}[{i}] {doc['kind']}", doc))
    return out


def _validate(doc: dict) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' (kubernetes-validate)")
    kv.validate(doc, K8S_VERSION, strict=True)


def test_the_docs_ship_the_manifests_this_test_expects():
    kinds = sorted(k.split()[-1] for k, _ in shipped_manifests())
    assert kinds == ["Pod", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"], kinds


@pytest.mark.parametrize("where,doc", shipped_manifests(), ids=[k for k, _ in shipped_manifests()])
def test_manifest_is_valid_kubernetes(where, doc):
    _validate(doc)


def test_the_validator_refuses_what_a_cluster_would():
    """The check can fail: the guide's pod with a misspelt field, and with a string uid."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' (kubernetes-validate)")
    pod = next(doc for k, doc in shipped_manifests() if k.endswith(" Pod"))
    import copy

    bad = copy.deepcopy(pod)
    bad["spec"]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(pod)
    bad["spec"]["securityContext"]["runAsUser"] = "jovyan"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)
