from lora_one.data.encoding import encode_rows, make_batches, make_collator
from lora_one.data.loading import load_splits
from lora_one.data.prepare import prepare_data

__all__ = ["load_splits", "encode_rows", "make_batches", "make_collator", "prepare_data"]
