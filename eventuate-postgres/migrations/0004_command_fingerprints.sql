-- What each processed command was: the entity it targeted and the command's type name. A key
-- (subscriber, triggering event, sequence) that comes back with another command is then
-- reported as an idempotency mismatch instead of being taken for a duplicate and dropped.
-- Runs with search_path set to the store's schema: names are deliberately unqualified.
--
-- Rows recorded before this migration keep NULLs: the command is unknown, and the store never
-- reports a mismatch against it. Adding nullable columns without a default, and a NOT VALID
-- check, only changes the catalog: no table rewrite or scan, however many rows there are.
ALTER TABLE processed_commands
    ADD COLUMN entity_type  TEXT,
    ADD COLUMN entity_id    TEXT,
    ADD COLUMN command_type TEXT,
    ADD CONSTRAINT processed_commands_fingerprint_whole CHECK (
        (entity_type IS NULL) = (entity_id IS NULL)
        AND (entity_id IS NULL) = (command_type IS NULL)
    ) NOT VALID;
