"""TFDS builders of kseg's datasets: CHAOS, LCTSC, chest X-rays and MSD spleen."""

import logging


class _TfdsNoticesOfOurOwnMaking(logging.Filter):
    """Drops two tensorflow_datasets warnings about what these builders do by design.

    * "`FeatureConnector.dtype` is deprecated": TFDS's own ``Tensor.decode_example`` reads
      the deprecated property whenever it decodes an encoded (ZLIB) tensor, as every image
      and mask of these builders is, so each pipeline printed it, naming no code a user
      could change.
    * "Using custom data configuration: <the whole config>": kseg's recipes derive configs
      (the fold count, a phantom's classes) from the registered ones on purpose; each run
      printed a 600-character line about it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("`FeatureConnector.dtype` is deprecated"):
            return False
        if message.startswith("Using custom data configuration") and record.args:
            config = record.args[0] if isinstance(record.args, tuple) else None
            return not type(config).__module__.startswith("tfds_builders.")
        return True


logging.getLogger("absl").addFilter(_TfdsNoticesOfOurOwnMaking())
