-- Why the newest file for a plugin was not loaded (its running version keeps
-- serving), kept apart from delivery errors.
ALTER TABLE pgevents.plugins
    ADD COLUMN load_error    text,
    ADD COLUMN load_error_at timestamptz;
