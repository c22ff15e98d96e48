"""``instaseg presets``: the names of the model presets, with their backbone and input size."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--show", metavar="NAME", help="print one preset's full config as YAML")


def run(args: argparse.Namespace) -> int:
    import yaml

    from instaseg.config.io import config_to_dict
    from instaseg.config.presets import get_preset, list_presets

    if args.show:
        print(yaml.safe_dump(config_to_dict(get_preset(args.show)), sort_keys=False), end="")
        return 0
    for name in list_presets():
        config = get_preset(name)
        model = config.model
        print(f"{name:32s} {model.backbone.name:18s} {'FPN' if getattr(model, 'fpn', None) else 'C4 '}  "
              f"test size {config.input.min_size_test}")
    return 0
