-- Every organisation the caller acted for (the `organisation` column keeps the first): an auditor
-- of an organisation reads the records of calls by its callers. Hashed only when not empty, so the
-- records written before it verify as they were written.
ALTER TABLE events ADD COLUMN organisations text[] NOT NULL DEFAULT '{}';
