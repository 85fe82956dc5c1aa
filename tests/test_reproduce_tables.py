"""The tables launch/reproduce.py sizes for its rows, against hand-counted parameters."""

from launch import reproduce


def test_the_tt_row_takes_the_largest_rank_within_the_main_sttd_tables_parameters():
    main = reproduce.main_spec("tmall", 40_727)
    # Main STTD (t = 2): core 1 is 169 x 16 x 60 = 162,240; core 2 is (60/2) x 241 x (8/2) = 28,920.
    assert main.num_params() == 162_240 + 28_920 == 191_160
    tt = reproduce.tt_spec(main)
    # t = 1 on the same factors: 169 x 16 x R + R x 241 x 8 = 4,632 R; R = 41 fits (189,912), 42 does not (194,544).
    assert (tt.item_factors, tt.dim_factors, tt.t, tt.ranks) == ((169, 241), (16, 8), 1, (41,))
    assert tt.num_params() == 4_632 * 41 <= main.num_params() < 4_632 * 42


def test_the_ml100k_main_student_is_20_1x_in_bytes():
    """docs/data.md's demo student: factors (36, 47) x (16, 8) at rank 16, t = 2."""
    from rec_kd import compress

    main = reproduce.main_spec("ml-100k", 1_682)
    assert (main.item_factors, main.dim_factors, main.ranks, main.t) == ((36, 47), (16, 8), (16,), 2)
    # 36 x 16 x 16 + 47 x 8 x 16 / 4 = 9,216 + 1,504 = 10,720 fp32 parameters: 42,880 bytes, against the
    # dense fp32 table of the 1,682 items and the padding row, 1,683 x 128 x 4 = 861,696 bytes.
    assert main.num_params() == 10_720 and compress.table_bytes(main) == 42_880
    assert f"{1_683 * 128 * 4 / compress.table_bytes(main):.1f}x" == "20.1x"
