-- What else a record says, as JSON: an event stream's organisations, cursor range and counts.
-- Hashed only when not empty, so the records written before it verify as they were written.
ALTER TABLE events ADD COLUMN detail text NOT NULL DEFAULT '';
