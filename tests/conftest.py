"""Markers for the whole suite.

``integration``: a test that starts Ray, a server (MLflow, PostgreSQL, S3, Chromium), a
sweep or a fresh ``caviar`` process. ``make test-fast`` runs the others (``-m "not
integration"``), the inner loop; ``make test`` runs everything. The table says which:
a module whose every test is one, or the names of its tests that are (parametrised
cases follow their test). tests/test_layout.py checks every name here is a test.
"""

from __future__ import annotations

import pytest

ALL = "*"
INTEGRATION: dict[str, str | tuple[str, ...]] = {
    "tests/models/test_serving.py": ("test_export_writes_weights_meta_and_fingerprint",),
    "tests/orchestrator/cli/test_bad_input_properties.py": ALL,
    "tests/orchestrator/cli/test_main.py": (
        "test_a_failure_with_caviar_debug_prints_the_traceback",
        "test_bad_input_exits_2_with_one_error_line", "test_ctrl_c_during_train_exits_130"),
    "tests/orchestrator/cli/test_spaces.py": (
        "test_help_exits_0", "test_sample_grid_prints_25_json_lines_with_the_fixed_optimizer",
        "test_sample_random_with_a_seed_is_reproducible",
        "test_sample_without_a_seed_prints_the_drawn_seed_which_repeats_the_sample",
        "test_validate_accepts_the_shipped_spaces",
        "test_validate_refuses_a_bad_file_with_exit_2_and_one_paragraph"),
    "tests/orchestrator/cli/test_sweeps.py": ALL,
    "tests/orchestrator/cluster/test_cluster_e2e.py": ALL,
    "tests/orchestrator/cluster/test_connect.py": (
        "test_connect_starts_a_local_ray_without_dashboard_and_a_second_call_keeps_it",
        "test_sweep_and_retune_refuse_a_ray_client_address"),
    "tests/orchestrator/cluster/test_hardening.py": ALL,
    "tests/orchestrator/cluster/test_hardware.py": ALL,
    "tests/orchestrator/cluster/test_loopback.py": ALL,
    "tests/orchestrator/cluster/test_storage.py": ALL,
    "tests/orchestrator/cluster/test_submit.py": ALL,
    "tests/orchestrator/panda/test_babysit.py": ALL,
    "tests/orchestrator/panda/test_plan.py": (
        "test_a_costlier_trial_flips_the_verdict_from_caviar_to_panda",
        "test_a_one_cpu_cluster_flips_the_verdict_to_panda_and_refuses_a_trial_too_big"),
    "tests/orchestrator/rerun/test_rerun.py": ALL,
    "tests/orchestrator/retune/test_retune_job.py": ALL,
    "tests/orchestrator/strategies/test_coarse_to_fine.py": (
        "test_the_default_pick_ends_nearer_the_optimum_than_uniform_draws",),
    "tests/orchestrator/strategies/test_driver_cost.py": (
        "test_coarse_to_fine_writes_once_per_round_and_best",),
    "tests/orchestrator/strategies/test_tune_searcher.py": (
        "test_a_param_space_with_search_domains_is_refused_and_constants_reach_the_trainable",
        "test_coarse_to_fine_restored_without_its_unfinished_trials_closes_the_round",
        "test_the_docs_example_runs_a_plain_tuner",
        "test_tpe_survives_a_restore_that_restarts_errored_trials"),
    "tests/orchestrator/sweep/test_export.py": (
        "test_sync_with_mlflow_unreachable_fails_and_keeps_the_records",),
    "tests/orchestrator/sweep/test_plots.py": ALL,
    "tests/orchestrator/sweep/test_sink.py": ALL,
    "tests/orchestrator/sweep/test_sweep_cluster.py": ALL,
    "tests/orchestrator/sweep/test_sweep_local.py": ALL,
    "tests/orchestrator/sweep/test_sweep_resume.py": ALL,
    "tests/orchestrator/sweep/test_sweep_spec.py": (
        "test_validate_refuses_a_bad_sweep_with_exit_2",),
    "tests/orchestrator/sweep/test_trainable.py": (
        "test_a_tune_trial_reports_all_its_epochs_and_keeps_best_pt",),
    "tests/orchestrator/tracking/test_registry.py": (
        "test_a_held_lock_renews_its_lease",
        "test_register_version_creates_the_model_once_and_numbers_its_versions"),
    "tests/orchestrator/tracking/test_store.py": (
        "test_a_new_store_is_a_copy_of_the_cached_empty_one_as_mlflow_would_make_it",
        "test_without_a_writable_cache_the_store_is_migrated_in_place"),
    "tests/orchestrator/tracking/test_tracking_server.py": ALL,
    "tests/orchestrator/tracking/test_ui.py": ALL,
    "tests/test_deploy_manifests.py": ("test_a_core_object_broken_on_purpose_fails",
                                       "test_each_overlay_renders_with_kustomize_into_valid_objects"),
    "tests/test_docs.py": ("test_a_shell_block_runs",),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: starts Ray, a server, a sweep or a "
                                       "caviar process (make test-fast leaves it out)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Marks the table's tests, and runs the modules with the most of them first: with
    ``make test``'s processes (``--dist loadfile``) a long module started last would
    run on alone while the other process has nothing left."""
    for item in items:
        names = INTEGRATION.get(item.nodeid.split("::")[0])
        if names == ALL or (names and item.originalname in names):
            item.add_marker(pytest.mark.integration)
    weight = {m: 0 if n == ALL else 1 for m, n in INTEGRATION.items()}
    items.sort(key=lambda item: weight.get(item.nodeid.split("::")[0], 2))
