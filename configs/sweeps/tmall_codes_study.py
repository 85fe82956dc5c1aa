"""Tmall: which codes table closes the STTD student's gap? (issue 40, part 4; valid only, one seed)

Every run is the main student (configs/tmall.py:student,codes: the full objective, seed 0, the
same batches) for 2 select-phase epochs on train without a refit, distilling from the teacher's
select-phase model (which never saw valid), with one thing about its item table changed:
- pq, 16 codebooks of 128 (717 kB with the uint8 codes, 29.1x the fp32 table), codes from the
  teacher (the method to beat), from an SVD of the training sessions (RecJPQ) and random;
- rq, 4 codebooks of 256 at about the same bytes (687 kB, 30.3x; beam 8);
- pq, 16 of 256 (783 kB, 26.6x): the issue's measured quantizer, to compare K at M = 16.
docs/findings.md has the valid metrics of each run by target group (launch/studies/target_groups.py).

  TMALL_TEACHER=/work/runs/odrec_c/tmall/teacher_s0 python -m launch.sweep \\
      --sweep=configs/sweeps/tmall_codes_study.py --root=/work/runs/codes_study/tmall --novmap
  python -m launch.collect --root=/work/runs/codes_study/tmall
"""

from rec_kd.train import sweeps


def get_sweep():
    teacher_workdir = sweeps.required_env("TMALL_TEACHER", __file__, "the grid's Tmall teacher workdir (ROOT/tmall/teacher_s0)")
    return {
        "config": "configs/tmall.py:student,codes",
        "base": {"teacher_workdir": teacher_workdir, "train.refit_on_valid": False, "train.num_epochs": 2},
        "zip": {
            "table.codes.method": ["pq", "pq", "pq", "rq", "pq"],
            "table.codes.num_codebooks": [16, 16, 16, 4, 16],
            "table.codes.codebook_size": [128, 128, 128, 256, 256],
            "table.codes.source": ["teacher", "svd", "random", "teacher", "teacher"],
        },
    }
