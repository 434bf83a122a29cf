"""build-bundle's orchestration: every source kind from one table (``registry``), checked,
fetched and described the same way (``assemble``). ``appliance.bundle`` is the leaf it writes
with (layout, store, manifest, signing); the kinds live in ``appliance.fetchers``."""

from appliance.build.assemble import BuildOptions, BuildReport, build_bundle

__all__ = ["BuildOptions", "BuildReport", "build_bundle"]
