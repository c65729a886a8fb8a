"""TFDS builders of kseg's datasets: CHAOS, LCTSC, chest X-rays and MSD spleen."""

import logging


class _TfdsOwnDtypeDeprecation(logging.Filter):
    """Drops tensorflow_datasets' "`FeatureConnector.dtype` is deprecated" warning.

    TFDS's own ``Tensor.decode_example`` reads the deprecated property whenever it decodes
    an encoded (ZLIB) tensor, as every image and mask of these builders is, so each
    pipeline printed the warning, which names no code a user could change.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`FeatureConnector.dtype` is deprecated")


logging.getLogger("absl").addFilter(_TfdsOwnDtypeDeprecation())
