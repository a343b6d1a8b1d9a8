"""nasx's Hydra launcher plugin, ``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's
SLURM launcher with nasx's checks (:mod:`nasx.launcher`). Hydra loads launcher classes only from the ``hydra_plugins``
namespace package, hence this package. Without the ``slurm`` extra there is nothing to extend and it defines nothing
(Hydra imports every plugin module on start-up; ``nasx`` itself says how to install the extra)."""
from __future__ import annotations

from typing import Any, Sequence

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurm
except ImportError:
    _SubmititSlurm = None

if _SubmititSlurm is not None:

    class SlurmLauncher(_SubmititSlurm):
        """Checks the settings against the trainer's before anything is submitted (one line on error), and asks for
        no GPUs for a CPU trainer; otherwise hydra-submitit-launcher's SLURM launcher."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            from nasx.launcher import checked_params

            self.params = checked_params(self.params, self.config)
            return super().launch(job_overrides, initial_job_idx)
