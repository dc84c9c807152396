from compembed.sweep.tuning import choose_lrs


def _row(method, lr, val, role="tune"):
    return {"role": role, "method": method, "table_lr": lr, "val_loss": val}


def test_choice_is_the_lowest_validation_loss_and_waits_for_every_candidate():
    rows = [_row("qr", 0.01, 0.50), _row("qr", 0.05, 0.47), _row("qr", 0.2, 0.49),
            _row("dhe", 0.01, 0.46), _row("dhe", 0.05, 0.48),  # dhe's 0.2 has not finished
            _row("hashing", 0.05, 0.40, role="")]  # a main cell is no tuning evidence
    assert choose_lrs(rows, (0.01, 0.05, 0.2)) == {"qr": 0.05}
    assert choose_lrs(rows + [_row("dhe", 0.2, 0.461)], (0.01, 0.05, 0.2)) == {"dhe": 0.01, "qr": 0.05}


def test_choice_is_deterministic_a_tie_goes_to_the_earlier_candidate():
    rows = [_row("robe", 0.2, 0.45), _row("robe", 0.01, 0.45), _row("robe", 0.05, 0.46)]
    assert choose_lrs(rows, (0.01, 0.05, 0.2)) == {"robe": 0.01}
    assert choose_lrs(list(reversed(rows)), (0.01, 0.05, 0.2)) == {"robe": 0.01}
    assert choose_lrs(rows, (0.2, 0.05, 0.01)) == {"robe": 0.2}  # the candidates' order decides ties
