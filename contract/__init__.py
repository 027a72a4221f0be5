"""The contract between the trigger (functions/) and the job (emr_job/): manifest and layout."""
