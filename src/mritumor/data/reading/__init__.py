"""Files → one Catalog: decoding a slice (:mod:`.io`), the Catalog table (:mod:`.catalog`), one
reader per source (:mod:`.readers`), several sources in one catalog (:mod:`.sources`), the MR
sequence of each slice (:mod:`.sequences`) and ``mritumor data inspect`` (:mod:`.inspect`)."""
