"""hashbench's harness. Plugins import only what this module exports.

    from benchmark import Attack, project, continuation_alpha   # an attack plugin
    from benchmark import HashingMethod, pairwise_similarity     # a hashing-method plugin
    from benchmark import Dataset, Splits, TensorImages           # a dataset plugin
    from benchmark import PrototypeNet, train_prototype_net       # THA, ProS-GAN, ATRDH
"""
from benchmark.attack import (STEP_RULES, STEP_SIZE_BY_RULE, Attack, AttackContext, Perturbed, anchor_codes,
                              codes_with_label, continuation_alpha, descend_images, hag_loss, hag_mask,
                              label_vote_code, pgd_toward_codes, project, snapshot_milestones)
from benchmark.centers import center_codes
from benchmark.data import (Dataset, DatasetNotFound, FileImages, ImageSet, Splits, TensorImages, data_roots,
                            one_hot, random_split, seeded_permutation)
from benchmark.defense import Defense, lr_milestones
from benchmark.flags import probe_retrieval
from benchmark.hashing import (HashingMethod, TrainContext, TrainingDiverged, check_finite, DSDHState,
                               logistic_pair_loss, make_optimizer, pairwise_similarity, training_outputs)
from benchmark.layers import gaussian_kernel, reverse_gradient, smmd
from benchmark.lists import ListSplit, load_lists, read_lists, read_split
from benchmark.model import HashModel, binarize, build_victim
from benchmark.plugins import OneOf, Plugin, Range, Registry
from benchmark.prototype import (PROTOTYPE_OBJECTIVES, PrototypeNet, circle_prototype_loss, prosgan_prototype_loss,
                                 prototype_loss, prototype_optimizer, prototype_step, sample_target_labels,
                                 seeded_torch, train_prototype_net)

HARNESS_VERSION = "3"  # 3: attack draws seeded by the cell identity; 2: victim init seeded by the cell seed


def base_classes() -> dict[str, type[Plugin]]:
    return {"hashing": HashingMethod, "attacks": Attack, "defenses": Defense, "datasets": Dataset}


__all__ = [
    "Attack", "AttackContext", "Perturbed", "codes_with_label", "continuation_alpha", "label_vote_code", "pgd_toward_codes", "project",
    "STEP_RULES", "STEP_SIZE_BY_RULE", "anchor_codes", "descend_images", "hag_loss", "hag_mask",
    "snapshot_milestones", "center_codes",
    "Dataset", "DatasetNotFound", "FileImages", "ImageSet", "Splits", "TensorImages", "data_roots", "one_hot",
    "random_split", "seeded_permutation", "ListSplit", "load_lists", "read_lists", "read_split", "Defense", "lr_milestones",
    "probe_retrieval",
    "DSDHState", "HashingMethod", "TrainContext", "TrainingDiverged", "check_finite",
    "logistic_pair_loss", "make_optimizer", "pairwise_similarity", "training_outputs", "HashModel", "binarize", "build_victim", "OneOf", "Plugin", "Range", "Registry",
    "PROTOTYPE_OBJECTIVES", "PrototypeNet", "circle_prototype_loss", "prosgan_prototype_loss", "prototype_loss",
    "prototype_optimizer", "prototype_step", "sample_target_labels", "seeded_torch", "train_prototype_net",
    "gaussian_kernel", "reverse_gradient", "smmd", "HARNESS_VERSION", "base_classes",
]
