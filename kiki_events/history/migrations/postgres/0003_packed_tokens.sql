-- Version 3: a row of events may hold several events (a message's consecutive tokens).
-- span: how many; seq and ts are the first's. Rows written before hold one event each.
ALTER TABLE events ADD COLUMN span INTEGER NOT NULL DEFAULT 1;
