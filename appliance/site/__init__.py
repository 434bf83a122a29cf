"""Site models: models fine-tuned inside the boundary, served, verified and audited like the
bundle's.

A site model never travels in a bundle. ``appliance models add`` hashes its files into the
digest-keyed store on the depot and records them in the site manifest, signed with a key made
on site at first use; install serves site models beside the bundle's, and every runtime checks
their files against the recorded digests before it starts.
"""
