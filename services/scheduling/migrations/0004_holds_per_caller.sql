-- Who took a hold: HoldSlot's caller (their subject), so that one caller's live holds can be counted
-- and capped (PAC_SCHEDULING_MAX_HOLDS_PER_CALLER). NULL for appointments not made by HoldSlot,
-- waitlist offers included: those count for no one.
ALTER TABLE appointments ADD COLUMN held_by text;

-- A caller's live holds: pending, not yet lapsed.
CREATE INDEX appointments_live_holds_by_holder ON appointments (held_by, hold_expires_at)
    WHERE status = 'pending' AND held_by IS NOT NULL;
