-- The name vocabulary behind fuzzy name search. A nearest-neighbour scan of a trigram index over
-- every patient slows down with the table when no close match exists; these tables stay small
-- (distinct words and distinct full names, not patients) so a name search first finds the near
-- words of each query word, then the known full names containing a near word for every query word,
-- ranks those names, and fetches their patients by exact name in rank order.
CREATE TABLE name_words (word text PRIMARY KEY);
CREATE INDEX name_words_trgm ON name_words USING gist (word pac_ext.gist_trgm_ops);

CREATE TABLE search_names (search_name text PRIMARY KEY);
-- No pending list: searches read this index on every call, and a pending list (the default) is
-- scanned in full by each of them until it is flushed.
CREATE INDEX search_names_words ON search_names USING gin (string_to_array(search_name, ' ')) WITH (fastupdate = off);

CREATE INDEX patients_by_search_name ON patients (search_name, id) WHERE merged_into IS NULL;

-- Kept by the database itself, so no write path can forget it. Entries are never removed: a name
-- nobody has any more yields no patients.
CREATE FUNCTION note_search_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO records.search_names (search_name) VALUES (NEW.search_name) ON CONFLICT DO NOTHING;
    INSERT INTO records.name_words (word)
        SELECT DISTINCT w FROM unnest(string_to_array(NEW.search_name, ' ')) AS w WHERE w <> ''
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER patients_name_vocabulary AFTER INSERT OR UPDATE OF search_name ON patients
    FOR EACH ROW EXECUTE FUNCTION note_search_name();

INSERT INTO search_names (search_name) SELECT DISTINCT search_name FROM patients ON CONFLICT DO NOTHING;
INSERT INTO name_words (word)
    SELECT DISTINCT w FROM patients, unnest(string_to_array(search_name, ' ')) AS w WHERE w <> ''
    ON CONFLICT DO NOTHING;
