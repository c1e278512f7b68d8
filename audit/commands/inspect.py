"""`audit inspect`: what a model file is, how it takes images, and (with data) how to feed it."""

from __future__ import annotations

import argparse
import json

from audit.commands.common import (
    MODEL_HELP,
    add_data_options,
    add_model_options,
    contract_options,
    load_label_map_option,
    positive_int,
)

__all__ = ["add_parser", "run", "recommend"]

# Keras' directory loaders stretch by default: the likeliest resize for a notebook's model when
# the sample cannot tell the modes apart.
_RESIZE_PREFERENCE = ("stretch", "crop", "pad")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect", help="show how a model takes images; with --data, find its input contract",
        description="Print the model's format, input shape, outputs, whether its graph scales "
                    "its own input, and the layers the audit uses (logits, embedding, "
                    "Grad-CAM). With --data (a labelled class-per-folder set or manifest), "
                    "score every pixel scaling x resize x channel order on a seeded sample and "
                    "recommend the best; --write saves it as the sidecar MODEL.json that "
                    "`audit run`, `audit predict` and `audit adapt` read.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--data", metavar="DIR", help="labelled images to test the candidates on")
    p.add_argument("--images", type=positive_int, default=64,
                   help="seeded class-stratified sample size (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true",
                   help="save the recommended contract as the sidecar MODEL.json")
    add_model_options(p)
    add_data_options(p)
    p.set_defaults(handler=run)


def recommend(scores: list, declared: dict, n: int):
    """(best candidate, candidates tied with it): ties are within one image of the best; the
    tie goes to declared values, then to Keras' default resize."""
    best_acc = max(s.accuracy for s in scores)
    tied = [s for s in scores if s.accuracy >= best_acc - 1.0 / n - 1e-9]

    def rank(s) -> tuple:
        return (-(s.preprocess == declared.get("preprocess")) - (s.resize == declared.get("resize")),
                -s.accuracy, _RESIZE_PREFERENCE.index(s.resize), s.channel_order != "RGB")
    return min(tied, key=rank), tied


def run(args: argparse.Namespace) -> int:
    from audit.errors import UsageError
    from model.contract_sources import sidecar_path
    from model.loaded import read_model_file

    if args.write and not args.data:
        raise UsageError("--write needs --data: the contract to save is found by testing it on "
                         "labelled images")
    model_file = read_model_file(args.model)
    _print_model(model_file)
    declared = contract_options(args)
    declared_fields = declared.declared()
    if not args.data:
        try:
            loaded = model_file.resolve(declared)
            print(f"contract: {loaded.contract.summary()}")
            _print_sources(loaded.contract)
        except UsageError as exc:
            print(f"contract: {exc}")
        return 0

    from audit.contract_check import score_candidates
    from audit.data import load_dataset
    from model.loaded import ContractOptions, classes_from_folder

    fallback = {"preprocess": "none"}
    try:
        loaded = model_file.resolve(declared, **fallback)
    except UsageError:
        # No class names declared anywhere: take the data's folders, as Keras' loaders do.
        names = classes_from_folder(args.data)
        declared = ContractOptions(**{**declared.__dict__, "classes": names})
        loaded = model_file.resolve(declared, **fallback)
        print(f"classes: taken from the sub-folders of '{args.data}' (sorted, as Keras' "
              f"directory loaders order them): {', '.join(names)}")
    dataset = load_dataset(args.data, name="inspect", label_map=load_label_map_option(args),
                           class_names=loaded.contract.class_names, strict=args.strict)
    scores, _, labels = score_candidates(loaded, dataset, n_images=args.images, seed=args.seed)
    n = len(labels)
    print(f"\naccuracy of each way of feeding the model, on {n} images of '{args.data}' "
          f"(seed {args.seed}):")
    print(f"  {'preprocess':10} {'resize':8} {'channels':8} {'accuracy':>8}  most predicted")
    for s in sorted(scores, key=lambda s: -s.accuracy):
        print(f"  {s.preprocess:10} {s.resize:8} {s.channel_order:8} {100 * s.accuracy:7.1f}%  "
              f"{s.top_class} ({100 * s.top_class_share:.0f}%)")
    best, tied = recommend(scores, declared_fields, n)
    print(f"\nrecommended: {best.flags()} ({100 * best.accuracy:.1f}%)")
    modes = sorted({s.resize for s in tied if s.preprocess == best.preprocess})
    if len(modes) > 1:
        print(f"  resize {', '.join(modes)} score within one image of each other: this sample "
              f"cannot tell them apart; '{best.resize}' is kept (declared, or Keras' loaders' "
              "default). Use the resize your training pipeline used.")
    majority = max(labels.tolist().count(c) for c in set(labels.tolist())) / n
    if best.accuracy <= majority + 0.1:
        print(f"  warning: the best candidate is barely above always answering the commonest "
              f"class ({100 * majority:.0f}%): check the class names and their order")
    if args.write:
        from audit.atomic import write_json

        contract = loaded.contract.with_(preprocess=best.preprocess, resize=best.resize,
                                         channel_order=best.channel_order)
        target = sidecar_path(args.model)
        record = {key: value for key, value in contract.describe().items()
                  if key in ("class_names", "input_size", "preprocess", "resize",
                             "channel_order", "views")}
        record["found_by"] = {"command": "audit inspect", "data": str(args.data), "images": n,
                              "seed": args.seed, "accuracy": best.accuracy}
        write_json(target, record)
        print(f"wrote {target}")
    return 0


def _print_model(model_file) -> None:
    shape = tuple(model_file.input_shape)
    print(f"model: {model_file.path} ({_FORMAT_NAMES[model_file.format]})")
    for note in model_file.notes:
        print(f"  {note}")
    print(f"input shape: {shape}")
    print(f"outputs: {model_file.n_outputs} {model_file.output_kind}")
    print("scales its own input: " + (f"yes ('{model_file.own_scaling}')" if model_file.own_scaling
                                       else "no (declare --preprocess)"))
    if model_file.metadata:
        print(f"CellAudit metadata: yes ({model_file.metadata.get('format', '?')})")
    if model_file.sidecar:
        print(f"sidecar: {json.dumps({k: v for k, v in model_file.sidecar.items() if k != 'found_by'})}")
    if model_file.keras_model is None:
        print("layer graph: none (SavedModel loaded for inference): Grad-CAM, the "
              "model-randomisation sanity check and AdaBN are not possible; logits and "
              "embedding come from the outputs")
        return
    from model.graph import classifier_head, find_feature_layer, path_name

    head = classifier_head(model_file.keras_model)
    if head is not None:
        print(f"classifier layer: '{path_name(head)}' (embedding = its input, "
              f"{int(head[-1].input.shape[-1])} values)")
    else:
        print("classifier layer: none (no Dense layer): the audit cannot take logits")
    try:
        layer = find_feature_layer(model_file.keras_model)
        grid = tuple(layer[-1].output.shape[1:3])
        print(f"Grad-CAM layer: '{path_name(layer)}' ({grid[0]}x{grid[1]} grid)")
    except ValueError as exc:
        print(f"Grad-CAM layer: none ({exc})")


def _print_sources(contract) -> None:
    for key, source in contract.sources.items():
        value = getattr(contract, key, None)
        shown = ", ".join(value) if isinstance(value, tuple) else value
        print(f"  {key}: {shown}  ({source})")


_FORMAT_NAMES = {"keras": "Keras 3 .keras archive", "h5": "legacy HDF5 full model",
                 "savedmodel": "TensorFlow SavedModel"}
