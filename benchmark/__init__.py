"""hashbench's harness. Plugins import only what this module exports.

    from benchmark import Attack, project, continuation_alpha   # an attack plugin
    from benchmark import HashingMethod, pairwise_similarity     # a hashing-method plugin
    from benchmark import Dataset, Splits, TensorImages           # a dataset plugin
    from benchmark import PrototypeNet, train_prototype_net       # THA, ProS-GAN, ATRDH

Two tiers: the plugin contracts and data types (``benchmark.attack.base``, ``benchmark.victim``,
``benchmark.data``), and the shared pieces of the papers' methods (``benchmark.parts``: PGD toward codes,
anchor codes, HAG's loss, CgAT's center codes, the PrototypeNet, PPL's gradient reversal layer, DSDH's
discrete step), which live in the harness because a plugin cannot import another plugin.
"""
from benchmark.attack.base import Attack, AttackContext, Perturbed, project
from benchmark.data.dataset import (
                                       Dataset,
                                       DatasetNotFound,
                                       Splits,
                                       data_roots,
                                       given_data_roots,
                                       one_hot,
                                       random_split,
                                       seeded_permutation,
)
from benchmark.data.images import FileImages, ImageSet, TensorImages
from benchmark.data.layouts import folder_splits
from benchmark.data.lists import ListSplit, load_lists, read_lists, read_split
from benchmark.keys import HARNESS_VERSION
from benchmark.parts.centers import center_codes
from benchmark.parts.dsdh import DSDHState
from benchmark.parts.layers import gaussian_kernel, reverse_gradient, smmd
from benchmark.parts.prototype import (
                                       PROTOTYPE_OBJECTIVES,
                                       PrototypeNet,
                                       circle_prototype_loss,
                                       prosgan_prototype_loss,
                                       prototype_loss,
                                       prototype_optimizer,
                                       prototype_step,
                                       sample_target_labels,
                                       seeded_torch,
                                       train_prototype_net,
)
from benchmark.parts.steps import (
                                       STEP_RULES,
                                       STEP_SIZE_BY_RULE,
                                       anchor_codes,
                                       codes_with_label,
                                       continuation_alpha,
                                       descend_images,
                                       hag_loss,
                                       hag_mask,
                                       label_vote_code,
                                       pgd_toward_codes,
                                       snapshot_milestones,
)
from benchmark.plugins import OneOf, Plugin, Range, Registry
from benchmark.scoring.flags import probe_retrieval
from benchmark.victim.defense import Defense, lr_milestones
from benchmark.victim.hashing import (
                                       HashingMethod,
                                       TrainContext,
                                       TrainingDiverged,
                                       check_finite,
                                       logistic_pair_loss,
                                       make_optimizer,
                                       pairwise_similarity,
                                       training_outputs,
)
from benchmark.victim.model import HashModel, binarize, build_victim

__all__ = [
    "Attack", "AttackContext", "Perturbed", "codes_with_label", "continuation_alpha", "label_vote_code",
    "pgd_toward_codes", "project", "STEP_RULES", "STEP_SIZE_BY_RULE", "anchor_codes", "descend_images", "hag_loss",
    "hag_mask", "snapshot_milestones", "center_codes",
    "Dataset", "DatasetNotFound", "FileImages", "ImageSet", "Splits", "TensorImages", "data_roots", "given_data_roots",
    "one_hot", "random_split", "seeded_permutation", "ListSplit", "load_lists", "read_lists", "read_split", "Defense",
    "lr_milestones", "probe_retrieval", "folder_splits",
    "DSDHState", "HashingMethod", "TrainContext", "TrainingDiverged", "check_finite",
    "logistic_pair_loss", "make_optimizer", "pairwise_similarity", "training_outputs", "HashModel", "binarize",
    "build_victim", "OneOf", "Plugin", "Range", "Registry",
    "PROTOTYPE_OBJECTIVES", "PrototypeNet", "circle_prototype_loss", "prosgan_prototype_loss", "prototype_loss",
    "prototype_optimizer", "prototype_step", "sample_target_labels", "seeded_torch", "train_prototype_net",
    "gaussian_kernel", "reverse_gradient", "smmd", "HARNESS_VERSION",
]
