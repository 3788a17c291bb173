"""Where Phaseboard keeps bytes: the blob store (``blobs``) and the helper that pairs a
committed blob with the row that references it (``commit``)."""
