"""Index jobs, one subsystem: a job and its files as the catalog records them (`records`), the leases that make
every job end (`leases`), the API's read views of jobs (`views`), the broker behind one object (`broker`), what a
task is given and holds open while it runs (`context`: `TaskContext`, `Resources`, `TaskRun`), the supervisor that
starts jobs (published, or run here), reconciles lost files and stops jobs at shutdown (`supervisor`), the body of
one file's task (`task`: encode the file, settle it), the merge of finished tasks' pending encodings into the store
through `indexer.ingest.commit` (`merge`), and the sweep of what dead writers left (`sweep`).
"""
