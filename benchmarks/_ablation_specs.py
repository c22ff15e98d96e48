"""What ``benchmarks/ablations.py`` trains and evaluates, and the papers' figures it prints beside ours.

Three layers: a :class:`Training` is one model trained per seed (a preset plus ``--set`` style
overrides); an :class:`Evaluation` is an inference-only variant of a trained model (another
suppression, mask scores ignored): the trained weights are reused, never retrained; a
:class:`Row` of a :class:`Table` names a (training, evaluation) pair and the paper's figures.

Paper figures are COCO mask AP in percent (AP / AP50 / AP75) from:

- Mask R-CNN (He et al. 2017), Table 2: (b) multinomial vs independent masks, ResNet-50-C4;
  class-agnostic masks 29.7 vs 30.3 in the text; (c) RoIPool vs RoIAlign, ResNet-50-C4 (stride 16);
  (d) the same at ResNet-50-C5 features (stride 32), where RoIAlign gains +7.3 AP and +10.5 AP75;
  (e) MLP vs FCN mask head, ResNet-50-FPN.
- Mask Scoring R-CNN (Huang et al. 2019): +1.4 mask AP over Mask R-CNN with ResNet-50-FPN.
- Soft-NMS (Bodla et al. 2017): +1.1 AP for Faster R-CNN on COCO (box AP; the MS R-CNN paper
  also reports Soft-NMS results, not reproduced here).
- YOLACT (Bolya et al. 2019), Table 2: (a) standard NMS 30.0 AP at 41.6 ms vs Fast NMS 29.9 AP at
  29.8 ms (whole model, Titan Xp); (b) k = 8 / 16 / 32 / 64 prototypes: 26.8 / 27.1 / 27.7 / 27.8.
- YOLACT++ (Bolya et al. 2020): deformable convolutions in the backbone, +1.8 mAP; fast mask
  re-scoring, about +1 mAP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Evaluation", "Training", "Row", "Table", "Family", "FAMILIES", "BLOCKS", "DEFAULT_ITERATIONS", "DEFAULT_IMAGES",
           "trainings", "tables", "trainings_for"]

BLOCKS = ("maskrcnn", "msrcnn", "msrcnn_demo", "yolact")
DEFAULT_ITERATIONS = 400  # per run, where a family sets none
DEFAULT_IMAGES = 500  # synthetic images (train + val), where a family sets none


@dataclass(frozen=True)
class Evaluation:
    """An inference-only variant of a trained model.

    ``inference``: ``InferenceConfig`` field overrides (``"nms=soft_nms"``);
    ``mask_scores``: False ranks masks by the class score even when the model predicts a mask
    score (MS R-CNN's MaskIoU, YOLACT++'s re-scoring), i.e. the model without its scoring.
    """

    name: str
    inference: tuple[str, ...] = ()
    mask_scores: bool = True


DEFAULT_EVAL = Evaluation("default")


@dataclass(frozen=True)
class Training:
    """One model trained once per seed: a preset of a :class:`Family` plus overrides.

    ``iterations`` / ``images``: a schedule / synthetic dataset size of its own (the demo's recipe),
    else the family's for its model kind; ``--iterations`` / ``--images`` override both.
    """

    name: str
    model: str  # "mask_rcnn", "ms_rcnn", "yolact" or "yolact_pp": which preset of the family
    overrides: tuple[str, ...] = ()
    evaluations: tuple[Evaluation, ...] = (DEFAULT_EVAL,)
    iterations: int | None = None
    images: int | None = None


@dataclass(frozen=True)
class Row:
    """One line of a table: ``training`` evaluated as ``evaluation``, with the paper's figures.

    ``paper`` holds AP, AP50, AP75 (None where the paper gives none); ``paper_delta`` is the
    paper's difference to the row's reference when the paper gives only a difference.
    ``versus`` is the index of the reference row (None: this row is a reference).
    """

    label: str
    training: str
    evaluation: str = "default"
    paper: tuple[float | None, float | None, float | None] = (None, None, None)
    paper_delta: float | None = None
    paper_note: str = ""
    paper_ms: float | None = None
    versus: int | None = 0


@dataclass(frozen=True)
class Table:
    block: str
    title: str
    note: str
    rows: tuple[Row, ...]
    timed: bool = False  # add inference-time columns
    maskiou: bool = False  # add the MaskIoU Pearson r column (models with a MaskIoU head)


@dataclass(frozen=True)
class Family:
    """The presets a run uses and the settings shared by every run of the family."""

    presets: dict[str, str]  # model kind -> preset name
    stride32_anchors: str  # anchor sizes of the two RPN levels (P5, P6) of the stride-32 variant
    settings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model kind -> overrides
    iterations: dict[str, int] = field(default_factory=dict)  # model kind -> training iterations
    images: dict[str, int] = field(default_factory=dict)  # model kind -> synthetic images (train + val)

    def iterations_for(self, model: str) -> int:
        """The training iterations of a ``model`` kind (``DEFAULT_ITERATIONS`` where none is set)."""
        return self.iterations.get(model, DEFAULT_ITERATIONS)

    def images_for(self, model: str) -> int:
        """The synthetic dataset size of a ``model`` kind (``DEFAULT_IMAGES`` where none is set)."""
        return self.images.get(model, DEFAULT_IMAGES)


# The tiny R-CNN runs use the demo's recipe as the preset has it (AdamW 1e-3, 4 images per step, 64
# RoIs per image), plus the gradient clipping benchmarks/ms_rcnn.py uses for MS R-CNN from scratch:
# one setting for every R-CNN run, so that MS R-CNN and Mask R-CNN differ only by the MaskIoU head.
_TINY_RCNN = ("train.clip_grad_norm=10.0",)
# Iterations per run. The tiny R-CNNs (4 images per step) reach 16 mask AP in 400; the tiny YOLACTs
# (8 images per step, one-stage, from scratch) learn more slowly and get twice as many, on a larger
# synthetic set: on 240 training images the tiny YOLACT memorised them (classification loss 0.03
# after 1500 iterations) while its validation AP stalled.
_TINY_ITERATIONS = {"mask_rcnn": 400, "ms_rcnn": 400, "yolact": 800, "yolact_pp": 800}
_TINY_IMAGES = {"mask_rcnn": 500, "ms_rcnn": 500, "yolact": 1500, "yolact_pp": 1500}
# The demo's recipe (``instaseg demo``: 1600 iterations of 4 images, 600 synthetic images with
# 20% val, data seed 0), where the MaskIoU head has had time to learn; at 400 iterations it has not.
DEMO_ITERATIONS, DEMO_IMAGES = 1600, 600

FAMILIES: dict[str, Family] = {
    "tiny": Family(
        presets={"mask_rcnn": "mask_rcnn_r18_fpn_tiny", "ms_rcnn": "ms_rcnn_r18_fpn_tiny",
                 "yolact": "yolact_r18_tiny", "yolact_pp": "yolact_pp_r18_tiny"},
        stride32_anchors="[[16, 32, 64], [64, 128, 256]]",
        settings={"mask_rcnn": _TINY_RCNN, "ms_rcnn": _TINY_RCNN},
        iterations=_TINY_ITERATIONS,
        images=_TINY_IMAGES,
    ),
    "r50": Family(
        presets={"mask_rcnn": "mask_rcnn_r50_fpn", "ms_rcnn": "ms_rcnn_r50_fpn",
                 "yolact": "yolact_r50_550", "yolact_pp": "yolact_pp_r50_550"},
        stride32_anchors="[[32, 64, 128], [128, 256, 512]]",
    ),
}

_SOFT_NMS = Evaluation("soft_nms", inference=("nms=soft_nms",))
_NMS = Evaluation("nms", inference=("nms=nms",))
_CLASS_SCORE = Evaluation("class_score", mask_scores=False)


def trainings(family: Family) -> dict[str, Training]:
    """Every training of every block, by name."""
    # Stride-32 features: the backbone gives res5 only, so the FPN is one level (P5, plus P6 for
    # the RPN) and every RoI is pooled at stride 32 (the paper's C5 variant, no dilation).
    stride32 = ("model.backbone.out_features=[res5]", f"model.rpn.anchor_sizes={family.stride32_anchors}")
    items = [
        Training("mrcnn", "mask_rcnn", evaluations=(DEFAULT_EVAL, _SOFT_NMS)),
        Training("mrcnn_roipool", "mask_rcnn", ("model.box_head.pooler_type=pool",)),
        Training("mrcnn_s32", "mask_rcnn", stride32),
        Training("mrcnn_s32_roipool", "mask_rcnn", stride32 + ("model.box_head.pooler_type=pool",)),
        Training("mrcnn_softmax", "mask_rcnn", ("model.mask_head.loss=softmax",)),
        Training("mrcnn_agnostic", "mask_rcnn", ("model.mask_head.class_agnostic=true",)),
        Training("mrcnn_mlp", "mask_rcnn", ("model.mask_head.head=mlp",)),
        Training("msrcnn", "ms_rcnn", evaluations=(DEFAULT_EVAL, _CLASS_SCORE, _SOFT_NMS)),
        Training("mrcnn_demo", "mask_rcnn", iterations=DEMO_ITERATIONS, images=DEMO_IMAGES),
        Training("msrcnn_demo", "ms_rcnn", evaluations=(DEFAULT_EVAL, _CLASS_SCORE), iterations=DEMO_ITERATIONS,
                 images=DEMO_IMAGES),
        *(Training(f"yolact_k{k}", "yolact", (f"model.head.num_prototypes={k}",),
                   evaluations=(DEFAULT_EVAL, _NMS) if k == 32 else (DEFAULT_EVAL,)) for k in (8, 16, 32, 64)),
        Training("yolactpp", "yolact_pp", evaluations=(DEFAULT_EVAL, _CLASS_SCORE)),
        Training("yolactpp_nodcn", "yolact_pp", ("model.backbone.deform_stages=[false, false, false, false]",)),
    ]
    return {t.name: t for t in items}


def _mask_rcnn_tables() -> list[Table]:
    return [
        Table("maskrcnn", "Mask R-CNN Table 2(c): RoIAlign vs RoIPool",
              "paper: ResNet-50-C4, stride-16 RoI features; ours: FPN P2-P5", (
                  Row("RoIAlign (ours: default)", "mrcnn", paper=(30.3, 51.2, 31.5), versus=None),
                  Row("RoIPool", "mrcnn_roipool", paper=(26.9, 48.8, 26.4)),
              )),
        Table("maskrcnn", "Mask R-CNN Table 2(d): RoIAlign vs RoIPool at stride-32 features",
              "paper: ResNet-50-C5, stride 32 (RoIAlign +7.3 AP, +10.5 AP75); ours: res5 only, one level", (
                  Row("RoIAlign, stride 32", "mrcnn_s32", paper=(30.9, 51.8, 32.1), versus=None),
                  Row("RoIPool, stride 32", "mrcnn_s32_roipool", paper=(23.6, 46.5, 21.6)),
              )),
        Table("maskrcnn", "Mask R-CNN Table 2(b): mask loss",
              "paper: ResNet-50-C4; class-agnostic from the text (29.7 vs 30.3)", (
                  Row("per-class sigmoid (ours: default)", "mrcnn", paper=(30.3, 51.2, 31.5), versus=None),
                  Row("multinomial softmax", "mrcnn_softmax", paper=(24.8, 44.1, 25.1)),
                  Row("class-agnostic sigmoid", "mrcnn_agnostic", paper=(29.7, None, None)),
              )),
        Table("maskrcnn", "Mask R-CNN Table 2(e): mask head", "paper: ResNet-50-FPN", (
            Row("FCN (ours: default)", "mrcnn", paper=(33.6, 55.2, 35.3), versus=None),
            Row("MLP", "mrcnn_mlp", paper=(31.5, 53.7, 32.8)),
        )),
    ]


def _ms_rcnn_tables() -> list[Table]:
    return [
        Table("msrcnn", "MS R-CNN vs Mask R-CNN", "paper: ResNet-50-FPN, +1.4 mask AP", (
            Row("Mask R-CNN", "mrcnn", versus=None),
            Row("MS R-CNN", "msrcnn", paper_delta=1.4, paper_note="+1.4 AP"),
        )),
        Table("msrcnn", "MS R-CNN's mask scoring (inference only, same models)",
              "the MaskIoU head's score vs the class score on one trained MS R-CNN; paper: the +1.4 AP above", (
                  Row("MS R-CNN, class score", "msrcnn", "class_score", versus=None),
                  Row("MS R-CNN, class score x MaskIoU", "msrcnn", paper_delta=1.4, paper_note="+1.4 AP"),
              )),
        Table("msrcnn", "NMS vs Soft-NMS (inference only, same models)",
              "paper: Bodla et al. 2017, +1.1 AP for Faster R-CNN on COCO (box AP); linear Soft-NMS here", (
                  Row("Mask R-CNN, NMS", "mrcnn", versus=None),
                  Row("Mask R-CNN, Soft-NMS", "mrcnn", "soft_nms", paper_delta=1.1, paper_note="+1.1 box AP"),
                  Row("MS R-CNN, NMS", "msrcnn", versus=None),
                  Row("MS R-CNN, Soft-NMS", "msrcnn", "soft_nms", paper_delta=1.1, paper_note="+1.1 box AP", versus=2),
              )),
    ]


def _ms_rcnn_demo_tables() -> list[Table]:
    recipe = (f"ours: the demo's recipe, {DEMO_ITERATIONS} iterations of 4 images on {DEMO_IMAGES} synthetic "
              "images (20% val, data seed 0), with the gradient clipping of every tiny R-CNN run here")
    return [
        Table("msrcnn_demo", "MS R-CNN vs Mask R-CNN on the demo's recipe",
              f"paper: ResNet-50-FPN, +1.4 mask AP; {recipe}", (
                  Row("Mask R-CNN", "mrcnn_demo", versus=None),
                  Row("MS R-CNN", "msrcnn_demo", paper_delta=1.4, paper_note="+1.4 AP"),
              ), maskiou=True),
        Table("msrcnn_demo", "MS R-CNN's mask scoring on the demo's recipe (inference only, same models)",
              "the MaskIoU head's score vs the class score on one trained MS R-CNN; Pearson r: predicted MaskIoU "
              "vs the IoU of each detection's mask with its best-matching ground truth of its class (paper: "
              f"+1.4 AP; r about 0.74); {recipe}", (
                  Row("MS R-CNN, class score", "msrcnn_demo", "class_score", versus=None),
                  Row("MS R-CNN, class score x MaskIoU", "msrcnn_demo", paper_delta=1.4, paper_note="+1.4 AP"),
              ), maskiou=True),
    ]


def _yolact_tables() -> list[Table]:
    return [
        Table("yolact", "YOLACT Table 2(a): Fast NMS vs standard NMS (inference only, same models)",
              "paper: YOLACT-550 R-101, times for the whole model on a Titan Xp; ours: k = 32", (
                  Row("standard NMS", "yolact_k32", "nms", paper=(30.0, None, None), paper_ms=41.6, versus=None),
                  Row("Fast NMS (ours: default)", "yolact_k32", paper=(29.9, None, None), paper_ms=29.8),
              ), timed=True),
        Table("yolact", "YOLACT Table 2(b): number of prototypes k", "paper: YOLACT-550 R-101 ablation schedule", (
            Row("k = 32 (paper default)", "yolact_k32", paper=(27.7, None, None), versus=None),
            Row("k = 8", "yolact_k8", paper=(26.8, None, None)),
            Row("k = 16 (tiny preset default)", "yolact_k16", paper=(27.1, None, None)),
            Row("k = 64", "yolact_k64", paper=(27.8, None, None)),
        ), timed=True),
        Table("yolact", "YOLACT++: fast mask re-scoring (inference only, same models)",
              "the re-scoring head's score vs the class score on one trained YOLACT++; paper: about +1 mAP", (
                  Row("YOLACT++, class score", "yolactpp", "class_score", versus=None),
                  Row("YOLACT++, re-scored", "yolactpp", paper_delta=1.0, paper_note="about +1 AP"),
              )),
        Table("yolact", "YOLACT++: deformable convolutions in the backbone",
              "paper: DCNv2 in res3-res5, +1.8 mAP; ours (tiny preset): DCNv2 in res5 only", (
                  Row("YOLACT++ without DCN", "yolactpp_nodcn", versus=None),
                  Row("YOLACT++ with DCN", "yolactpp", paper_delta=1.8, paper_note="+1.8 AP"),
              ), timed=True),
    ]


def tables(blocks: tuple[str, ...] = BLOCKS) -> list[Table]:
    """The tables of the selected blocks, in print order."""
    every = _mask_rcnn_tables() + _ms_rcnn_tables() + _ms_rcnn_demo_tables() + _yolact_tables()
    return [t for t in every if t.block in blocks]


def trainings_for(selected: list[Table], family: Family) -> list[Training]:
    """The trainings the tables need, each once, in first-use order."""
    known = trainings(family)
    names = list(dict.fromkeys(row.training for table in selected for row in table.rows))
    return [known[name] for name in names]
