"""What a bundle needs to run, read off the shipped file itself: manifest.json's ``requires``.

- ONNX: onnxruntime, the oldest release that implements the graph's ONNX opset and IR version (onnxruntime's
  compatibility table), the execution provider it was verified on, and the operators outside the ONNX
  standard. onnxruntime's contrib operators (domain ``com.microsoft``: Attention, QAttention,
  SkipLayerNormalization, ...) are written by onnxruntime's own optimizer and versioned with it: a graph that
  holds any runs on onnxruntime only (not on OpenVINO, TensorRT or another ONNX runtime), from the release
  that verified it on.
- OpenVINO IR: OpenVINO, from the release that wrote and verified it (an older one may lack its operator
  sets), the device, and the compile options it was verified with (manifest.json's ``openvino_config``).
- TorchScript and torch.export: torch, the release that wrote it.
- A decoder's bundle (task text-generation) also names the package whose class loads it for ``generate``:
  optimum-onnx's ORTModelForCausalLM for ONNX, optimum-intel's OVModelForCausalLM for an IR (pipeline.ship.generation),
  from the release this project loads bundles with (tests/ship/test_decoder_bundle.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.artifact import Format
from pipeline.runtime.sessions import OPENVINO_DEVICES, PROVIDERS

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
CONTRIB_DOMAIN = "com.microsoft"
# (release, highest ONNX opset, highest IR version it implements), from onnxruntime's compatibility table;
# a graph beyond the last row needs the release that verified it
ORT_RELEASES = (("1.10", 15, 8), ("1.11", 16, 8), ("1.12", 17, 8), ("1.14", 18, 8), ("1.15", 19, 9),
                ("1.17", 20, 9), ("1.18", 21, 10))
RUNTIME_PACKAGES = {Format.ONNX: ("onnxruntime", "onnxruntime-gpu"), Format.OPENVINO: ("openvino",),
                    Format.TORCHSCRIPT: ("torch",), Format.TORCH_EXPORT: ("torch",)}
# (package, class, oldest release this project generates with) of the class that loads a decoder's bundle
GENERATION_PACKAGES = {Format.ONNX: ("optimum-onnx[onnxruntime]", "ORTModelForCausalLM", "0.1.0"),
                       Format.OPENVINO: ("optimum-intel[openvino]", "OVModelForCausalLM", "2.2.0")}
RUNTIMES = {Format.ONNX: "onnxruntime", Format.OPENVINO: "openvino", Format.TORCHSCRIPT: "torch",
            Format.TORCH_EXPORT: "torch"}


def installed(packages: tuple[str, ...]) -> str | None:
    """The version of the first of ``packages`` that is installed (None when none is)."""
    for name in packages:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def requirements(fmt: Format, model_file: Path, device: str, openvino_config: dict[str, Any] | None,
                 task: str | None = None) -> dict[str, Any]:
    """manifest.json's ``requires``: the runtime, its minimum and verified versions, where it runs, for ONNX
    the graph's opset, IR version and non-standard operators, and for a decoder the package that generates."""
    verified = installed(RUNTIME_PACKAGES[fmt])
    requires: dict[str, Any] = {"runtime": RUNTIMES[fmt], "min_version": verified, "verified_with": verified}
    if fmt is Format.ONNX:
        requires.update(onnx_requirements(model_file, verified))
        requires["execution_provider"] = PROVIDERS.get(device)
    elif fmt is Format.OPENVINO:
        requires["ir_version"] = ir_version(model_file)
        requires["device"] = OPENVINO_DEVICES.get(device, device.upper())
        requires["compile_config"] = openvino_config
    else:
        requires["device"] = device
    if task == "text-generation":
        requires["generation"] = generation_requirements(fmt)
    return requires


def generation_requirements(fmt: Format) -> dict[str, str] | None:
    """The package whose class loads a decoder's bundle of format ``fmt`` for ``generate`` (None: no such class)."""
    if fmt not in GENERATION_PACKAGES:
        return None
    package, cls, version = GENERATION_PACKAGES[fmt]
    return {"package": package, "class": cls, "min_version": version}


def onnx_requirements(model_file: Path, verified: str | None) -> dict[str, Any]:
    """The graph's ONNX opset and IR version, the operators it uses outside the standard domains, and the
    oldest onnxruntime that runs it: by the compatibility table, or the verified release when it holds
    contrib operators (or is beyond the table)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    local = {(function.domain, function.name) for function in model.functions}  # the graph's own functions
    used = used_operators(model) - local
    imports = {entry.domain: entry.version for entry in model.opset_import}
    opset = imports.get("", imports.get("ai.onnx"))
    contrib = sorted({op for domain, op in used if domain.startswith(CONTRIB_DOMAIN)})
    custom = sorted({f"{domain}::{op}" for domain, op in used
                     if domain not in STANDARD_DOMAINS and not domain.startswith(CONTRIB_DOMAIN)})
    floor = next((release for release, max_opset, max_ir in ORT_RELEASES
                  if (opset or 0) <= max_opset and model.ir_version <= max_ir), None)
    return {"min_version": verified if contrib or custom or floor is None else floor,
            "onnx_opset": opset, "onnx_ir_version": model.ir_version, "contrib_ops": contrib,
            "custom_ops": custom, "onnxruntime_only": bool(contrib or custom)}


def used_operators(model: Any) -> set[tuple[str, str]]:
    """(domain, op type) of every node, in subgraphs (If, Loop, Scan bodies) and local functions too."""
    found: set[tuple[str, str]] = set()
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            nodes += list(graphs.pop().node)
            continue
        node = nodes.pop()
        found.add((node.domain, node.op_type))
        for attribute in node.attribute:
            graphs += ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
    return found


def ir_version(xml_file: Path) -> int | None:
    """The IR version an OpenVINO .xml declares on its root element (read without parsing the rest)."""
    try:
        for _, element in ElementTree.iterparse(str(xml_file), events=("start",)):
            version = element.get("version")
            return int(version) if version and version.isdigit() else None
    except (ElementTree.ParseError, OSError):
        return None
    return None
