"""`spear k8s manifest`: the Deployment and headless Service parse, and carry the probes,
ports and Secret references the runtime relies on."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from spear import InvalidConfiguration
from spear.cli.main import main
from spear.runtime.manifests import FunctionDeployment, manifests, to_yaml


def render(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["k8s", "manifest", *args]) == 0
    out = capsys.readouterr().out
    if "--format" in args:
        document = json.loads(out)
        assert document["kind"] == "List"
        return list(document["items"])
    return [doc for doc in yaml.safe_load_all(out) if doc is not None]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def test_manifest_has_deployment_and_headless_service(capsys: pytest.CaptureFixture[str]) -> None:
    docs = render(capsys, "--function", "echo", "--image", "registry.example/echo:1.2",
                  "--replicas", "3", "--handler", "app.handlers:echo")
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    deployment = by_kind(docs, "Deployment")
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["metadata"]["name"] == "echo"
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    [container] = pod["containers"]
    assert container["image"] == "registry.example/echo:1.2"

    # Probes: native gRPC probes on the gRPC port; liveness asks the `liveness` service.
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert container["startupProbe"]["grpc"]["port"] == 50051

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "tcp": 50052}
    args = container["args"]
    assert args[:5] == ["worker", "--grpc", "0.0.0.0:50051", "--tcp", "0.0.0.0:50052"]
    assert args[-1] == "app.handlers:echo"

    # The token: a Secret mounted as a file, handed to the worker with --token-file.
    token_file = args[args.index("--token-file") + 1]
    [mount] = [m for m in container["volumeMounts"] if token_file.startswith(m["mountPath"])]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "echo-token"
    assert token_file.endswith("/" + volume["secret"]["items"][0]["path"])
    assert volume["secret"]["items"][0]["key"] == "token"
    assert "SPEAR_TOKEN" not in json.dumps(container)

    limits = container["resources"]["limits"]
    assert limits == {"cpu": "500m", "memory": "256Mi"}
    assert container["resources"]["requests"] == limits
    assert pod["terminationGracePeriodSeconds"] > int(args[args.index("--drain-timeout") + 1])
    assert container["securityContext"]["runAsNonRoot"] is True

    service = by_kind(docs, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc": (50051, "grpc"), "tcp": (50052, "tcp")}


def test_json_output_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    docs = render(capsys, "--function", "resize", "--image", "img", "--replicas", "0",
                  "--namespace", "media", "--tcp-port", "0", "--secret", "shared-token",
                  "--cpu", "2", "--memory", "1Gi", "--cpu-request", "250m",
                  "--format", "json")
    deployment = by_kind(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == "media"
    assert deployment["spec"]["replicas"] == 0
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["grpc"]
    assert "--tcp" not in container["args"]
    assert container["args"][-2:] == ["--wasm", "/app/resize.wasm"]
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "1Gi"}}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("secret", {}).get("secretName") == "shared-token" for v in volumes)
    assert [p["name"] for p in by_kind(docs, "Service")["spec"]["ports"]] == ["grpc"]


def test_tls_serves_probes_on_a_plaintext_health_port(capsys: pytest.CaptureFixture[str]) -> None:
    docs = render(capsys, "--function", "echo", "--image", "img", "--tls-secret", "echo-tls",
                  "--mtls")
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--health-port"):
        assert flag in args
    assert args[args.index("--health-port") + 1] == "50053"
    assert container["readinessProbe"]["grpc"]["port"] == 50053
    assert container["livenessProbe"]["grpc"]["port"] == 50053
    assert any(v.get("secret", {}).get("secretName") == "echo-tls" for v in pod["volumes"])


def test_with_secret_prints_a_random_token(capsys: pytest.CaptureFixture[str]) -> None:
    first = by_kind(render(capsys, "--function", "a", "--image", "i", "--with-secret"), "Secret")
    second = by_kind(render(capsys, "--function", "a", "--image", "i", "--with-secret"), "Secret")
    assert first["metadata"]["name"] == "a-token"
    assert len(first["stringData"]["token"]) >= 32
    assert first["stringData"]["token"] != second["stringData"]["token"]


@pytest.mark.parametrize("changes", [
    {"function": "Bad_Name"}, {"replicas": -1}, {"grpc_port": 50052},
    {"mutual_tls": True}, {"handler": "m:f", "wasm": "x.wasm"},
])
def test_invalid_specs_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidConfiguration):
        FunctionDeployment(**{"function": "ok", "image": "img", **changes})


def test_yaml_emitter_quotes_what_would_be_ambiguous() -> None:
    tricky = ["yes", "no", "on", "null", "~", "123", "1.5", "0x10", "", " lead", "a: b",
              "#hash", "- dash", "---", "key:", "tab\there", 'quote"s', "ünï", "*alias",
              "&anchor", "!tag", "%pct", "@at", "`tick", "{x}", "[y]", "a,b", "--flag"]
    document = {"items": tricky, "map": {t or "empty": t for t in tricky},
                "nested": [{"a": 1, "b": [True, None, 2.5]}, {}], "empty": []}
    spec = FunctionDeployment("fn", "img")
    assert yaml.safe_load(to_yaml([document]).removeprefix("---\n")) == document
    assert list(yaml.safe_load_all(to_yaml(manifests(spec)))) == manifests(spec)
