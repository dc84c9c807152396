"""Partition schemes: map category ids to one class (table row) per partition."""
from .base import ID_DTYPES, Partition, RadixPartition, check_ids
from .factors import choose_divisors, choose_moduli, integer_root, is_complementary
from .schemes import ChineseRemainder, GeneralizedQuotientRemainder, Hashing, Identity, QuotientRemainder

__all__ = [
    "Partition",
    "RadixPartition",
    "check_ids",
    "ID_DTYPES",
    "QuotientRemainder",
    "GeneralizedQuotientRemainder",
    "ChineseRemainder",
    "Hashing",
    "Identity",
    "choose_divisors",
    "choose_moduli",
    "integer_root",
    "is_complementary",
]
