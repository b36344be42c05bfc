-- Placeholder on branch headroom for migration 0008 (another branch's); the lead drops this file when merging.
SELECT 1;
