"""The declarative appliance spec: models and loading."""

from appliance.spec.load import load_spec, load_spec_bytes, parse_spec
from appliance.spec.models import SPEC_VERSION, Spec

__all__ = ["SPEC_VERSION", "Spec", "load_spec", "load_spec_bytes", "parse_spec"]
