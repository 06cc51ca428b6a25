"""The protection lab: what makes and measures protection, outside the gateway's runtime.

Training surrogates (:mod:`.train`, on the layouts of :mod:`.datasets`), protecting a whole
dataset as one release (:mod:`.dataset_job`), protecting files with a profile outside the
gateway (:mod:`.offline`), and the evaluation of the methods against models the hospital did
not train (:mod:`.evaluation`). The lab uses the public names of the runtime and of
:mod:`dicom_gateway.protect`; nothing in the runtime imports the lab (an import contract in
``pyproject.toml`` checks both in CI).
"""

__all__: list[str] = []
