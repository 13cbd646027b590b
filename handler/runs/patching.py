"""Patches of a request (PATCH, a batch's ``patch`` list, multipart patch parts), merged with the
run's stored bytes, and the merges a commit retries when another request wrote the run meanwhile.

A patch reads the run's current bytes, merges its fields in (later fields win; merge.py) and
stores the result anew: nothing stored is overwritten, and the row is repointed at commit. A patch
that finds no run is stored alone, invisible until a post of the run comes; the post is then
merged under it. BatchIngest (ingest.py) takes these as a mixin: they work on its books of what
the request writes.
"""

from __future__ import annotations

import json
import uuid

from handler.base.errors import RunError
from handler.runs.merge import build_object, merged, object_fields
from handler.runs.schema import REQUIRED, Run
from handler.runs.splitter import parse_run
from handler.store.objects import Location
from handler.store.rows import Replacement, RunRow, StoredRun


class PatchMerging:
    """The patch half of BatchIngest. Uses its books -- ``_rows`` (runs new to the database),
    ``_replaced`` (runs it has, rewritten), ``_superseded``, ``_index``, ``_patched``, ``_posted``,
    ``_patch_fields`` -- and its ``_store_run``, ``_read``, ``_db``, ``tenant`` and ``_settings``."""

    async def add_patch(self, run_id: uuid.UUID, patch: bytes, index: int) -> None:
        """Fields to set on a run (given as a checked JSON object); nulls mean "not given"."""
        updates = [(k, raw) for k, raw in object_fields(patch) if raw != "null" and k != "id"]
        label = f"patch {index} of run {run_id}"
        if run_id in self._rows:
            base, old = StoredRun.of(self._rows[run_id]), None
        elif run_id in self._replaced:
            previous = self._replaced[run_id]
            base, old = StoredRun.of(previous.row), previous.old
        else:
            found = await self._db.find_current(self.tenant, run_id)
            if found is None:  # the patch came first: stored alone until the post comes
                body = build_object([("id", json.dumps(str(run_id))), *updates])
                run = self._parse(body, label, posted=False)
                self._index.setdefault(run_id, index)
                location = await self._store_run(run_id, run.body)
                self._rows[run_id] = RunRow.of(run, location, posted=False)
                self._patched.append(run_id)
                return
            base, old = found, found.location
        if old is not None:  # a run the database has
            self._patch_fields[run_id] = object_fields(merged(self._patch_fields.get(run_id, []), updates))
        self._index.setdefault(run_id, index)
        await self._patch_stored(run_id, updates, base, old, label)
        self._patched.append(run_id)

    async def _patch_stored(
        self, run_id: uuid.UUID, updates: list, base: StoredRun, old: Location | None, label: str
    ) -> None:
        """Merge ``updates`` into a run's stored bytes and store the result anew; at commit the row
        is written new (``old`` None) or repointed from ``old``."""
        fields = object_fields(await self._read(base.location, base.size))
        run = self._parse(merged(fields, updates), label, base.posted)
        trace_id = dict(fields).get("trace_id")
        if trace_id is not None and uuid.UUID(json.loads(trace_id)) != run.trace_id:
            raise RunError(400, f"{label}: trace_id of a run cannot change", self._index.get(run_id))
        location = await self._store_run(run_id, run.body)
        self._superseded.append(base.location)
        row = RunRow.of(run, location, base.posted)
        if old is None:
            self._rows[run_id] = row
        else:
            self._replaced[run_id] = Replacement(row, old)

    async def _merge_posts_under_patches(self, patches: dict[uuid.UUID, StoredRun]) -> None:
        """Runs posted now whose patches were stored by earlier requests."""
        for run_id, stored_patches in patches.items():
            posted = self._rows.pop(run_id)
            post = await self._read(posted.location, posted.size_bytes)
            row = await self._post_under_patches(post, stored_patches, f"run {run_id}")
            self._superseded.append(posted.location)
            self._replaced[run_id] = Replacement(row, stored_patches.location)

    async def _apply_patches_stored_alone(self, stored: dict[uuid.UUID, StoredRun]) -> None:
        """Patches that found no run when they came, whose run another request stored since."""
        for run_id, current in stored.items():
            alone = self._rows.pop(run_id)
            patch = object_fields(await self._read(alone.location, alone.size_bytes))
            self._superseded.append(alone.location)
            updates = [(k, raw) for k, raw in patch if k != "id"]
            self._patch_fields[run_id] = updates
            await self._patch_stored(run_id, updates, current, current.location, f"patch of run {run_id}")

    async def _store_patches_of_gone(self, gone: frozenset[uuid.UUID]) -> None:
        """Runs this request patches that were deleted (a retention sweep) after it read them: as if
        it had come after the deletion, each patch is stored as a patch of an unknown run is --
        alone, its own fields only, invisible until a post of the run comes (README, PATCH). A run
        this request posts under patches stored before is written new, as it was merged."""
        for run_id in gone:
            replaced = self._replaced.pop(run_id)
            if run_id in self._posted:
                self._rows[run_id] = replaced.row
                continue
            self._superseded.append(replaced.row.location)
            body = build_object([("id", json.dumps(str(run_id))), *self._patch_fields[run_id]])
            run = self._parse(body, f"patch of run {run_id}", posted=False)
            self._rows[run_id] = RunRow.of(run, await self._store_run(run_id, run.body), posted=False)

    async def _post_under_patches(self, post: bytes, patches: StoredRun, label: str) -> RunRow:
        """A run's post merged with the patches stored before it (their fields win), stored."""
        updates = object_fields(await self._read(patches.location, patches.size))
        fields = object_fields(post)
        run = self._parse(merged(fields, updates), label)
        if uuid.UUID(json.loads(dict(fields)["trace_id"])) != run.trace_id:
            raise RunError(400, f"{label}: a patch sent before it gave the run another trace_id")
        location = await self._store_run(run.id, run.body)
        self._superseded.append(patches.location)
        return RunRow.of(run, location)

    def _parse(self, body: bytes, label: str, posted: bool = True) -> Run:
        s = self._settings
        return parse_run(body, s.max_run_bytes, s.max_depth, label, REQUIRED if posted else ())
