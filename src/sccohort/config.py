"""The run configuration: one TOML file, validated into typed sections with the study's defaults.

Each ``[section]`` of the TOML file is a small dataclass registered with
:func:`~sccohort.config_checks.config_section`; its field defaults are the study's choices,
its type hints say what a key accepts, and `setting` declares, beside the default, the range
of a value (both from :mod:`sccohort.config_checks`)::

    @config_section("qc")
    @dataclass
    class QcSection:
        max_mito_pct: float = setting(between(0, 100), default=20.0)
        min_genes: int = setting(at_least(0), default=200)

after which ``config.qc.max_mito_pct`` works, ``to_dict()`` lists it, and a typo such as
``max_mito_pc``, a wrong type such as ``min_genes = "200"`` or a value out of range such as
``max_mito_pct = 120`` is an :class:`InputError` naming the full key (``qc.max_mito_pct``) and
what it accepts. Every value is checked: numbers are finite, strings and names are not empty
and hold no control character, lists name nothing twice; a section may add a
``relations()`` method for keys that must agree. Relative paths (fields typed ``Path``) are
relative to the TOML file's folder. ``[contrasts.<name>]`` tables become
:class:`~sccohort.cohort.Contrast` objects, checked the same way.

:func:`load_inputs` then reads both tables and builds every contrast's design, collecting
every problem it finds into one error, so ``sccohort validate`` reports them all at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sccohort import config_checks
from sccohort.cohort import (
    DEFAULT_TIMEPOINT,
    DEFAULT_TISSUE,
    ClinicalTable,
    Contrast,
    ContrastDesign,
    SampleSheet,
    check_donors,
    raise_all,
)
from sccohort.config_checks import (
    PERCENT,
    PROBABILITY,
    SCHEDULER,
    _build,
    _Context,
    _read_toml,
    above,
    at_least,
    at_least_one,
    between,
    config_section,
    setting,
)
from sccohort.errors import InputError

_CONTRAST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: The largest seed accepted: a 32-bit signed int, as harmonypy (Harmony until 2026-12) took
#: (``numpy.random.RandomState``, scikit-learn and UMAP take up to 2**32 - 1).
MAX_SEED = 2**31 - 1
#: Most principal components: more describe noise, and PCA's cost grows with them.
MAX_PCS = 1000
#: Most neighbours of a kNN graph.
MAX_NEIGHBOURS = 1000
#: Most random permutations per test:
#: 10,000,000 resolve p-values of 1e-7 and take minutes per contrast; more would seem hung.
MAX_PERMUTATIONS = 10_000_000
#: Most relabellings enumerated by an exact test: they are held in memory at once.
MAX_EXACT = 1_000_000


@config_section("inputs")
@dataclass
class InputsSection:
    """``[inputs]``: the sample sheet and the clinical table (CSV files)."""

    samples: Path
    clinical: Path | None = None


@config_section("run")
@dataclass
class RunSection:
    """``[run]``: seed, primary visit, and where per-sample tasks run.

    ``primary_timepoint`` / ``primary_tissue`` pick the sample that represents each donor in
    cross-sectional analyses. ``scheduler`` (see :mod:`sccohort.cluster`): ``"auto"``,
    ``"local"``, ``"threads"``, ``"sync"`` or a Dask scheduler address; ``sccohort run
    --scheduler`` overrides it. ``rna_on_disk`` (see :mod:`sccohort.pp.store`): where the
    RNA counts of all genes live; ``"auto"`` moves them to ``OUT/rna_counts.h5`` once the
    cells that pass QC exceed 300,000, ``"always"`` / ``"never"`` force it. Results are
    the same either way.
    """

    seed: int = setting(
        between(0, MAX_SEED),
        default=0,
        why=f"Harmony's seed is a 32-bit signed integer: at most 2**31 - 1 = {MAX_SEED:,}",
    )
    primary_timepoint: str = DEFAULT_TIMEPOINT
    primary_tissue: str = DEFAULT_TISSUE
    scheduler: str = setting(SCHEDULER, default="auto")
    rna_on_disk: Literal["auto", "always", "never"] = "auto"


@config_section("clinical")
@dataclass
class ClinicalSection:
    """``[clinical]``: ``types`` overrides the inferred type of clinical variables."""

    types: dict[str, Literal["binary", "categorical", "continuous"]] = field(default_factory=dict)


@config_section("qc")
@dataclass
class QcSection:
    """``[qc]``: per-sample quality control (:mod:`sccohort.pp.qc` documents each key).

    ``mode = "study"`` applies the reference study's fixed thresholds (mito < 20 %, < 40 %
    in tissue; 200 < genes < 5,000); ``"adaptive"`` (default) uses per-sample MAD bounds.
    ``min_genes = "auto"``: 100 genes, scaled down for targeted panels of fewer than 10,000
    genes (100 x genes / 20,000: 5 for a 1,000-gene panel).
    """

    mode: Literal["adaptive", "study"] = "adaptive"
    nmads: float = setting(above(0), default=5.0)
    min_genes: int | Literal["auto"] = setting(at_least(0), default="auto")
    mito_floor_pct: float = setting(PERCENT, default=10.0)
    mito_ceiling_pct: float = setting(PERCENT, default=25.0)
    mito_ceiling_tissue_pct: float = setting(PERCENT, default=50.0)
    hb_max_pct: float = setting(PERCENT, default=10.0)
    platelet_max_pct: float = setting(PERCENT, default=5.0)
    min_prot_umis: float = setting(at_least(0), default=10.0)
    isotype_min_pct: float = setting(PERCENT, default=2.0)
    doublet_method: Literal["cite", "scrublet", "none"] = "cite"
    doublet_neighbours: Literal["auto", "exact", "approximate"] = "auto"

    def relations(self) -> list[tuple[str, str]]:
        """``(key, problem)`` for keys that contradict each other: the mito clip bounds."""
        floor = self.mito_floor_pct
        return [
            (name, f"{getattr(self, name)} is below mito_floor_pct = {floor}: the adaptive mito "
             "cut is clipped to [floor, ceiling]")
            for name in ("mito_ceiling_pct", "mito_ceiling_tissue_pct")
            if getattr(self, name) < floor
        ]  # fmt: skip


@config_section("normalize")
@dataclass
class NormalizeSection:
    """``[normalize]``: RNA total-count + log1p; protein CLR (Seurat margin 2) or dsb.

    ``protein = "auto"`` uses dsb when every sample sheet row has a ``raw_path`` (the
    empty droplets dsb needs), else CLR.
    """

    target_sum: float = setting(above(0), default=1e4)
    protein: Literal["auto", "clr", "dsb"] = "auto"


@config_section("embedding")
@dataclass
class EmbeddingSection:
    """``[embedding]``: HVGs, PCA, Harmony, the WNN graph, Leiden and UMAP.

    Defaults follow Seurat's WNN workflow (20 neighbours, 30 RNA PCs) and the study's
    clustering resolution (0.5); ``n_pcs_prot = 0`` means min(antibodies - 1, 30).
    ``n_top_genes = "auto"``: 2,000 highly variable genes, or every gene of a smaller panel
    (mitochondrial, ribosomal and haemoglobin genes aside); ``n_pcs`` is capped below the
    number of HVGs. ``harmony_key`` names the ``obs`` column Harmony corrects
    (``"sample_id"`` or ``"batch"``; ``""`` switches Harmony off).
    """

    n_top_genes: int | Literal["auto"] = setting(at_least(2), default="auto")
    n_pcs: int = setting(
        between(1, MAX_PCS),
        default=30,
        why="It is capped below the HVGs and the cells at run time; Seurat uses 30",
    )
    n_pcs_prot: int = setting(between(0, MAX_PCS), default=0)
    harmony_key: Literal["sample_id", "batch", "donor_id", "timepoint", "tissue", ""] = "sample_id"
    n_neighbors: int = setting(between(2, MAX_NEIGHBOURS), default=20)
    resolution: float = setting(above(0), default=0.5)
    umap_max_cells: int = setting(at_least(100), default=100_000)


@config_section("subsets")
@dataclass
class SubsetsSection:
    """``[subsets]``: subclustering of each lineage (see :mod:`sccohort.tl.subsets`).

    ``neighbours``: the lineage's kNN search; ``"auto"`` is exact up to 70,000 cells in a
    lineage and an inverted-file search above (recall in ``benchmarks/bench_subset_knn.py``);
    ``"exact"`` / ``"approximate"`` force one.
    """

    neighbours: Literal["auto", "exact", "approximate"] = "auto"


@config_section("annotation")
@dataclass
class AnnotationSection:
    """``[annotation]``: optional label transfer from a labelled reference.

    ``reference`` names an ``.h5ad`` (or ``.h5mu``, its RNA) with labelled cells; its
    ``reference_keys`` columns are transferred to ``obs`` ``ref_<key>`` by neighbours in a
    shared embedding (see :mod:`sccohort.tl.transfer`). ``labels = "reference"`` makes the
    transferred ``l1`` / ``l2`` the cohort's labels (they must use the Azimuth PBMC
    vocabulary, which subsets and the report expect); the default keeps the marker-based
    labels and reports the agreement.
    """

    reference: Path | None = None
    reference_keys: list[str] = setting(at_least_one, factory=lambda: ["l1", "l2"])
    labels: Literal["markers", "reference"] = "markers"
    min_confidence: float = setting(between(0, 1), default=0.5)
    transfer_neighbors: int = setting(between(1, MAX_NEIGHBOURS), default=20)


@config_section("association")
@dataclass
class AssociationSection:
    """``[association]``: donor-level tests of subset abundance for every contrast.

    ``levels``: composition levels tested (``l1``, ``l2``, ``subset``, and shares within the
    parent l1 lineage, ``subset_in_l1`` / ``l2_in_l1``). The default test permutes clinical
    labels among donors (``n_perm`` random permutations, or all when there are at most
    ``max_exact``); ``classic`` adds the study's KS + Bonferroni for binary contrasts.
    ``min_cells``: donors whose primary sample keeps fewer cells after QC leave every
    donor-level test (composition, neighbourhoods, DE, prediction, signatures), with a
    warning naming them: a share of 3 cells is not a measurement. ``groupings``: variables
    (``"ARA"``) or crossings (``"ARA*SRC"``) compared across their levels with
    Kruskal-Wallis + Dunn (``dunn_adjust``); donors missing a value are left out.
    ``neighbourhoods``: Milo-style neighbourhood DA on ``milo_embedding`` (``"auto"``: the
    embedding the embed stage used, ``X_harmony``, or ``X_harmony_prot`` for a protein-only
    cohort) with the ``milo_preset`` parameters (``"default"``, or the study's ``"study"`` /
    ``"study_lineage"``).
    """

    levels: list[Literal["l1", "l2", "subset", "subset_in_l1", "l2_in_l1"]] = setting(
        at_least_one, factory=lambda: ["l1", "l2", "subset", "subset_in_l1"]
    )
    n_perm: int = setting(between(1, MAX_PERMUTATIONS), default=10_000)
    max_exact: int = setting(between(0, MAX_EXACT), default=20_000)
    min_cells: int = setting(at_least(0), default=50)
    classic: bool = True
    groupings: list[str] = field(default_factory=list)
    dunn_adjust: Literal["bonferroni", "holm"] = "bonferroni"
    neighbourhoods: bool = True
    milo_preset: Literal["default", "study", "study_lineage"] = "default"
    milo_embedding: Literal["auto", "X_pca", "X_harmony", "X_pca_prot", "X_harmony_prot"] = "auto"


@config_section("characterise")
@dataclass
class CharacteriseSection:
    """``[characterise]``: what the run works out about each associated subset.

    A subset is *associated* when the default test gives it ``padj < alpha`` (level
    ``subset`` or ``subset_in_l1``) in some contrast; at most ``max_subsets`` of them, by
    ``padj``, are characterised: enrichment of their markers (MSigDB Hallmark, plus
    ``gene_sets`` GMT and ``tf_targets`` TRRUST-style TSV files when given), a protein gating
    strategy (``gating_max_gates`` thresholds, ``gating_test_fraction`` of donors held out)
    and time courses (shares, and the subset's named gene plus ``timecourse_genes`` in its
    parent lineage). Every binary contrast gets a donor-level prediction from subset shares
    (``prediction_perm`` permutations) and donor-level signature scores (tested with
    ``signature_perm`` permutations). Pseudobulk DE (samples x groups with at least
    ``de_min_cells`` cells) runs, per contrast, for its associated subsets and their parent
    l2 (``de_groups = "associated"``; a contrast on a sample sheet column also every l2) or
    for every subset and l2 (``"all"``); each group's Wald statistics (``gsea_min_genes``
    genes or more) get a preranked GSEA with ``gsea_perm`` permutations.
    """

    alpha: float = setting(PROBABILITY, default=0.05, why="A significance level: 0.05, say")
    max_subsets: int = setting(at_least(0), default=6)
    gene_sets: Path | None = None
    tf_targets: Path | None = None
    gating_max_gates: int = setting(between(1, 10), default=3)
    gating_test_fraction: float = setting(PROBABILITY, default=0.3)
    prediction_perm: int = setting(between(1, MAX_PERMUTATIONS), default=200)
    signature_perm: int = setting(between(1, MAX_PERMUTATIONS), default=2000)
    timecourse_genes: list[str] = field(default_factory=list)
    de_groups: Literal["associated", "all"] = "associated"
    de_min_cells: int = setting(at_least(1), default=10)
    gsea_perm: int = setting(between(1, MAX_PERMUTATIONS), default=2000)
    gsea_min_genes: int = setting(at_least(1), default=50)


@dataclass
class Config:
    """A validated configuration.

    Attributes
    ----------
    path
        The TOML file (absolute).
    sections
        Section name -> its dataclass instance (also reachable as ``config.<name>``).
    contrasts
        Contrast name -> :class:`~sccohort.cohort.Contrast`, in file order.
    """

    path: Path
    sections: dict[str, Any]
    contrasts: dict[str, Contrast]

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"'Config' has no attribute or section '{name}'")

    @property
    def samples(self) -> Path:
        """The sample sheet CSV (absolute)."""
        return self.sections["inputs"].samples

    @property
    def clinical(self) -> Path | None:
        """The clinical table CSV (absolute), or ``None``."""
        return self.sections["inputs"].clinical

    @property
    def seed(self) -> int:
        """Seed of every random step."""
        return self.sections["run"].seed

    @property
    def primary_timepoint(self) -> str:
        """Timepoint of the sample that represents each donor."""
        return self.sections["run"].primary_timepoint

    @property
    def primary_tissue(self) -> str:
        """Tissue of the sample that represents each donor."""
        return self.sections["run"].primary_tissue

    @property
    def variable_types(self) -> dict[str, str]:
        """Clinical variable -> type overrides."""
        return dict(self.sections["clinical"].types)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved configuration as JSON-ready data (for ``run.json``).

        Every section with every default filled in, paths absolute (strings), plus
        ``"config"``: the TOML file it came from.
        """
        out: dict[str, Any] = {"config": str(self.path)}
        for name, section in self.sections.items():
            out[name] = _plain(section)
        out["contrasts"] = {name: c.to_dict() for name, c in self.contrasts.items()}
        return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# Schema checking


# ---------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration.

    Parameters
    ----------
    path
        The TOML file. Relative paths inside it are relative to its folder.

    Returns
    -------
    Config
        Every registered section (defaults filled in) and the declared contrasts.

    Raises
    ------
    InputError
        Syntax errors (with the line), unknown keys (with the valid ones), wrong types (with
        the expected type), missing required keys; all problems at once.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    raw = _read_toml(path)
    ctx = _Context(path=path, base=path.parent)
    problems: list[InputError] = []
    known = [*config_checks.SECTIONS, "contrasts"]
    for name in raw:
        if name not in known:
            problems.append(
                InputError(
                    f"unknown section or key '{name}'",
                    file=path,
                    key=name,
                    hint=f"Valid sections: {', '.join(f'[{k}]' for k in known)}",
                )
            )
    sections: dict[str, Any] = {}
    for name, cls in config_checks.SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(InputError(f"expected a table [{name}]", file=path, key=name))
            table = {}
        try:
            sections[name] = _build(cls, table, name, ctx)
        except InputError as exc:
            problems.extend(getattr(exc, "problems", [exc]))
    contrasts: dict[str, Contrast] = {}
    declared = raw.get("contrasts", {})
    if not isinstance(declared, dict):
        problems.append(
            InputError("expected tables [contrasts.<name>]", file=path, key="contrasts")
        )
        declared = {}
    for name, table in declared.items():
        key = f"contrasts.{name}"
        if not _CONTRAST_NAME.match(name):
            problems.append(
                InputError(
                    f"contrast name '{name}' must start with a letter or digit and hold only "
                    "letters, digits, '_', '-', '.'",
                    file=path,
                    key=key,
                    hint="Names appear in file names; e.g. SSc_vs_HD",
                )
            )
        if not isinstance(table, dict):
            problems.append(InputError("expected a table", file=path, key=key))
            continue
        try:
            contrasts[name] = _build(Contrast, table, key, ctx, name=name)
        except InputError as exc:
            problems.extend(getattr(exc, "problems", [exc]))
    raise_all(problems, f"the config {path}")
    return Config(path=path, sections=sections, contrasts=contrasts)


def build_designs(
    config: Config, sample_sheet: SampleSheet, clinical: ClinicalTable | None
) -> dict[str, ContrastDesign]:
    """Build every contrast's design: on the donors of the primary samples, or on samples.

    A contrast on a column of the sample sheet (timepoint, tissue, a sample-level variable)
    is built on the samples of every donor (paired within donor where donors have both
    sides); the others on the donors of the primary samples.

    Parameters
    ----------
    config
        The configuration (contrasts, primary timepoint and tissue).
    sample_sheet, clinical
        The validated tables.

    Returns
    -------
    dict
        Contrast name -> :class:`~sccohort.cohort.ContrastDesign`, in config order.

    Raises
    ------
    InputError
        Every contrast's problem, together.
    """
    primary = sample_sheet.primary_samples(config.primary_timepoint, config.primary_tissue)
    known = clinical.table.index if clinical is not None else sample_sheet.donors
    donors = [d for d in primary["donor_id"].unique() if d in known]
    designs: dict[str, ContrastDesign] = {}
    problems: list[InputError] = []
    for name, contrast in config.contrasts.items():
        chosen = None if contrast.variable in sample_sheet.table.columns else donors
        try:
            designs[name] = contrast.design(
                clinical, chosen, samples=sample_sheet, tissue=config.primary_tissue
            )
        except InputError as exc:
            problems.append(exc)
    raise_all(problems)
    return designs


def load_inputs(config: Config) -> tuple[SampleSheet, ClinicalTable | None]:
    """Read the sample sheet and clinical table, cross-check them, and check every contrast.

    Every problem found (in either table, between them, or in any contrast's design on the
    primary samples' donors) is collected and raised as one :class:`InputError`, so a user
    sees them all in one ``sccohort validate``. Clinical donors without samples only warn.

    Parameters
    ----------
    config
        A loaded :class:`Config`.

    Returns
    -------
    tuple
        ``(SampleSheet, ClinicalTable or None)``; the clinical table is ``None`` when
        ``inputs.clinical`` is not set (allowed only without contrasts).
    """
    problems: list[InputError] = []

    def collect(exc: InputError) -> None:
        problems.extend(getattr(exc, "problems", [exc]))

    sheet: SampleSheet | None = None
    if not config.samples.is_file():
        collect(
            InputError(
                f"sample sheet {config.samples} not found",
                file=config.path,
                key="inputs.samples",
                hint="Relative paths are relative to the config file's folder",
            )
        )
    else:
        try:
            sheet = SampleSheet.from_csv(config.samples).of_tissue(config.primary_tissue)
        except InputError as exc:
            collect(exc)
    clinical = _read_clinical(config, sheet, collect)
    if sheet is not None:
        try:
            sheet.primary_samples(config.primary_timepoint, config.primary_tissue)
        except InputError as exc:
            collect(exc)
            sheet_ok = False
        else:
            sheet_ok = True
        if clinical is not None:
            try:
                check_donors(sheet, clinical)
            except InputError as exc:
                collect(exc)
        if sheet_ok and (clinical is not None or config.clinical is None):
            try:
                build_designs(config, sheet, clinical)
            except InputError as exc:
                collect(exc)
    raise_all(problems)
    return sheet, clinical  # type: ignore[return-value]


def _read_clinical(
    config: Config, sheet: SampleSheet | None, collect: Callable[[InputError], None]
) -> ClinicalTable | None:
    """The clinical table (None when not set, or broken: its problems go to ``collect``)."""
    clinical = None
    if config.clinical is None:
        on_samples = set(sheet.table.columns) if sheet is not None else set()
        for name, contrast in config.contrasts.items():
            if contrast.variable in on_samples and not contrast.covariates:
                continue  # a sample-level contrast needs no clinical table
            collect(
                InputError(
                    "contrasts on donor-level variables need a clinical table, but "
                    "inputs.clinical is not set",
                    file=config.path,
                    key=f"contrasts.{name}",
                    hint='Set clinical = "<file>.csv" in [inputs] (a contrast on a column of '
                    "the sample sheet, such as timepoint, needs none)",
                )
            )
    elif not config.clinical.is_file():
        collect(
            InputError(
                f"clinical table {config.clinical} not found",
                file=config.path,
                key="inputs.clinical",
                hint="Relative paths are relative to the config file's folder",
            )
        )
    else:
        try:
            clinical = ClinicalTable.from_csv(config.clinical, types=config.variable_types)
        except InputError as exc:
            collect(exc)
    return clinical


# registered last: [spatial] and [tissue] come after [characterise] in messages and run.json
from sccohort import config_spatial, config_tissue  # noqa: E402, F401
