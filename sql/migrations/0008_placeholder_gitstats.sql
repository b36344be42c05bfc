-- Placeholder on branch gitstats for the loop-health branch's 0008 (issue 16): delete at merge.
SELECT 1;
